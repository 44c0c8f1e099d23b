//! Generates N finished records (default 1,000,000) in a data directory through the store's own
//! API, then times the queries people make. For BENCHMARKS.md; not a test.
//!
//! `cargo run --release -p scfsim-record --example million -- DATA_DIR [N]`

use std::time::{Duration, Instant};

use scfsim_record::{EndReason, Invocation, Query, RecordStore, Retention, Search};
use time::OffsetDateTime;
use uuid::Uuid;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    println!(
        "{label:<58} {:>9.2} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    out
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(args.next().expect("DATA_DIR"));
    let n: usize = args.next().map_or(1_000_000, |v| v.parse().expect("N"));
    let keep = Retention {
        max_records: n.max(100_000),
        ..Retention::default()
    };
    let (store, report) = timed("open", || RecordStore::open_with(&dir, keep).unwrap());
    println!(
        "opened with {} records; RSS {} KiB",
        report.loaded,
        rss_kib()
    );
    let functions = ["echo", "chat", "game", "push", "auth"];
    let reasons = [
        EndReason::ClientClosed {
            code: Some(1000),
            reason: String::new(),
        },
        EndReason::ClientDropped,
        EndReason::IdleTimeout {
            after: Duration::from_secs(15),
        },
        EndReason::FunctionClosed {
            code: Some(4000),
            reason: "bye".into(),
        },
        EndReason::GatewayShutdown,
    ];
    // Records spread over the last 30 days, one every ~2.6 s.
    let now = OffsetDateTime::now_utc();
    let span = time::Duration::days(30);
    let start = Instant::now();
    let mut peak_rss = 0;
    for i in 0..n {
        let at = now - span + span * (i as f64 / n as f64);
        let mut inv = Invocation::begin(Uuid::new_v4(), functions[i % 5], at);
        inv.messages_in = (i % 17) as u64;
        inv.messages_out = (i % 13) as u64;
        inv.bytes_in = inv.messages_in * 40;
        inv.bytes_out = inv.messages_out * 40;
        inv.startup_ms = Some(2 + (i % 90) as u64);
        inv.client_addr = Some("127.0.0.1:50000".into());
        inv.path = Some(format!("/{}", functions[i % 5]));
        // Uneven: 1 in 7 is not 200, 1 in 97 is an idle timeout.
        let reason = if i % 97 == 0 {
            &reasons[2]
        } else if i % 7 == 0 {
            &reasons[1 + (i / 7) % 4]
        } else {
            &reasons[0]
        };
        inv.finish(reason, at + time::Duration::milliseconds((i % 5000) as i64));
        while let Err(scfsim_record::RecordError::Backlog { .. }) = store.finish(inv.clone()) {
            // Faster than the writer: let it catch up (a generator, not the gateway).
            store.flush(Duration::from_secs(60));
        }
        if i % 100_000 == 99_999 {
            peak_rss = peak_rss.max(rss_kib());
            println!(
                "{:>8} records, {:>6.1} s, RSS {} KiB",
                i + 1,
                start.elapsed().as_secs_f64(),
                rss_kib()
            );
        }
    }
    timed("flush (everything written)", || {
        assert!(store.flush(Duration::from_secs(600)))
    });
    println!(
        "generated {n} in {:.1} s ({:.0}/s); peak RSS while generating {} KiB",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64(),
        peak_rss
    );
    queries(&store, now);
    drop(store);
    let (store, report) = timed("reopen", || RecordStore::open_with(&dir, keep).unwrap());
    println!(
        "reopened with {} records; RSS {} KiB",
        report.loaded,
        rss_kib()
    );
    queries(&store, now);
    println!("RSS after queries {} KiB", rss_kib());
}

fn queries(store: &RecordStore, now: OffsetDateTime) {
    let page = |s: Search| store.search(&s).unwrap();
    timed("newest 100 (no filter)", || page(Search::default()));
    timed("newest 100 of function=chat", || {
        page(Search {
            function: Some("chat".into()),
            ..Search::default()
        })
    });
    timed("newest 100 of status_code=456", || {
        page(Search {
            status_code: Some(456),
            ..Search::default()
        })
    });
    timed("newest 100 of end_reason=idle_timeout", || {
        page(Search {
            end_reason: Some("idle_timeout".into()),
            ..Search::default()
        })
    });
    timed("since/until: one hour 15 days ago, limit 1000", || {
        page(Search {
            since: Some(now - time::Duration::days(15)),
            until: Some(now - time::Duration::days(15) + time::Duration::hours(1)),
            limit: Some(1000),
            ..Search::default()
        })
    });
    let mut s = Search {
        limit: Some(1000),
        ..Search::default()
    };
    timed("50 pages of 1000 by cursor (50,000 records)", || {
        for _ in 0..50 {
            let p = page(s.clone());
            s.cursor = p.next_cursor;
        }
    });
    timed("function=game&status_code=200, 10,000", || {
        store.query(&Query {
            function: Some("game".into()),
            status_code: Some(200),
            limit: Some(10_000),
        })
    });
    let one = page(Search {
        since: Some(now - time::Duration::days(20)),
        limit: Some(1),
        ..Search::default()
    });
    let id = one.records[0].request_id;
    timed("get one by request_id", || store.get(id));
    let aggregates = timed("aggregates (for /metrics)", || store.aggregates());
    println!(
        "aggregates: {} finished invocations",
        aggregates.invocations()
    );
}
