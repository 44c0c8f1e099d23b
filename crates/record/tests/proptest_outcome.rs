//! Properties of `classify` (semantics.md §3 and §4) over generated end reasons: it never
//! panics, the close-code rules hold for every code, every close reason fits a close frame, and
//! every close frame scfsim sends carries a code that may be sent.

use std::time::Duration;

use proptest::prelude::*;
use scfsim_record::{
    classify, may_be_sent, CloseFrame, CloseStep, ClosedBy, EndReason, Outcome, Side, StatusCode,
};

/// The most a close frame's reason can carry: 125 bytes of control payload minus the code.
const MAX_CLOSE_REASON: usize = 123;

/// Reasons and details: empty, short, long, multi-byte, control characters.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "\\PC{0,40}",
        ".{0,300}",
        "[é✓ñ😀a]{100,200}",
        (0usize..400).prop_map(|n| "x".repeat(n)),
        (0usize..200).prop_map(|n| "é".repeat(n)),
    ]
}

fn code() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![
        Just(None),
        any::<u16>().prop_map(Some),
        (995u16..1020).prop_map(Some),
        prop::sample::select(vec![1000u16, 1010, 1011, 1005, 1006, 3000, 4999]).prop_map(Some),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        any::<u64>().prop_map(Duration::from_secs),
        any::<u64>().prop_map(Duration::from_nanos),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Function)]
}

/// Every variant of `EndReason`, with arbitrary contents.
fn end_reason() -> impl Strategy<Value = EndReason> {
    prop_oneof![
        (code(), text()).prop_map(|(code, reason)| EndReason::ClientClosed { code, reason }),
        Just(EndReason::ClientDropped),
        (any::<u16>(), text())
            .prop_map(|(code, detail)| EndReason::ClientProtocolError { code, detail }),
        (code(), text()).prop_map(|(code, reason)| EndReason::FunctionClosed { code, reason }),
        text().prop_map(|detail| EndReason::InstanceExited { detail }),
        (any::<u16>(), text())
            .prop_map(|(code, detail)| EndReason::FunctionProtocolError { code, detail }),
        duration().prop_map(|after| EndReason::IdleTimeout { after }),
        duration().prop_map(|after| EndReason::ExecutionTimeout { after }),
        any::<u32>().prop_map(|limit_mb| EndReason::MemoryLimit { limit_mb }),
        (side(), prop::option::of(any::<u64>()), any::<u64>())
            .prop_map(|(from, size, limit)| EndReason::MessageTooLarge { from, size, limit }),
        text().prop_map(|detail| EndReason::RateLimited { detail }),
        text().prop_map(|detail| EndReason::BootstrapNotFound { detail }),
        text().prop_map(|detail| EndReason::BootstrapExited { detail }),
        text().prop_map(|detail| EndReason::NotListening { detail }),
        text().prop_map(|detail| EndReason::ImagePullFailed { detail }),
        text().prop_map(|detail| EndReason::ImagePullTimedOut { detail }),
        text().prop_map(|detail| EndReason::ContainerInitError { detail }),
        text().prop_map(|detail| EndReason::QuotaExceeded { detail }),
        text().prop_map(|detail| EndReason::InstanceRateExceeded { detail }),
        text().prop_map(|detail| EndReason::GatewayError { detail }),
        (code(), text()).prop_map(|(code, reason)| EndReason::EndedByAdmin { code, reason }),
        any::<u16>().prop_map(|http_status| EndReason::UpgradeRejected { http_status }),
        Just(EndReason::GatewayShutdown),
        Just(EndReason::GatewayCrashed),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// `classify` is total and its output is self-consistent: success exactly at 200, a close
    /// reason that fits a close frame, no reason without a close code, and the same answer
    /// twice.
    #[test]
    fn classify_never_panics_and_is_consistent(reason in end_reason()) {
        let c = classify(&reason);
        prop_assert_eq!(c.outcome == Outcome::Success, c.status_code == StatusCode::SUCCESS);
        prop_assert!(c.close_reason.len() <= MAX_CLOSE_REASON, "{} bytes", c.close_reason.len());
        if c.close_code.is_none() {
            prop_assert!(c.close_reason.is_empty(), "{:?}", c);
        }
        prop_assert!(!c.end_reason.is_empty());
        prop_assert!(
            c.end_reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "snake_case: {}",
            c.end_reason
        );
        prop_assert_eq!(classify(&reason), c);
    }

    /// Every close frame scfsim sends fits a control frame and carries a code that may be
    /// sent; an end without a recorded close code sends nothing; a side that closed first is
    /// only answered.
    #[test]
    fn close_frames_are_sendable(reason in end_reason()) {
        let c = classify(&reason);
        for step in [&c.closing.to_client, &c.closing.to_function] {
            if let CloseStep::Send(Some(frame)) = step {
                prop_assert!(may_be_sent(frame.code), "{:?}", frame);
                prop_assert!(frame.reason.len() <= MAX_CLOSE_REASON, "{} bytes", frame.reason.len());
            }
            if c.close_code.is_none() {
                prop_assert_eq!(step, &CloseStep::Nothing);
            }
        }
        match reason {
            EndReason::ClientClosed { .. } => prop_assert_eq!(&c.closing.to_client, &CloseStep::Answer),
            EndReason::FunctionClosed { .. } => prop_assert_eq!(&c.closing.to_function, &CloseStep::Answer),
            _ => {
                prop_assert_ne!(&c.closing.to_client, &CloseStep::Answer);
                prop_assert_ne!(&c.closing.to_function, &CloseStep::Answer);
            }
        }
    }

    /// A peer's close frame reaches the other side as it came, when its code may be sent (a
    /// peer's frame always fits).
    #[test]
    fn peer_close_frames_are_passed_on(code in code(), reason in "\\PC{0,30}", client in any::<bool>()) {
        let c = classify(&if client {
            EndReason::ClientClosed { code, reason: reason.clone() }
        } else {
            EndReason::FunctionClosed { code, reason: reason.clone() }
        });
        let passed = if client { &c.closing.to_function } else { &c.closing.to_client };
        let expected = match code {
            Some(code) if may_be_sent(code) && reason.len() <= MAX_CLOSE_REASON => {
                CloseStep::Send(Some(CloseFrame { code, reason }))
            }
            Some(code) if may_be_sent(code) => return Ok(()),
            _ => CloseStep::Send(None),
        };
        prop_assert_eq!(passed, &expected);
    }

    /// A client close: exactly 1000 and 1010 are a success; any other code, and no code
    /// (recorded as 1005), is a 456.
    #[test]
    fn client_close_is_200_only_for_1000_and_1010(code in code(), reason in text()) {
        let c = classify(&EndReason::ClientClosed { code, reason });
        let expected = match code {
            Some(1000 | 1010) => 200,
            _ => 456,
        };
        prop_assert_eq!(c.status_code.as_u16(), expected, "code {:?}", code);
        prop_assert_eq!(c.close_code, Some(code.unwrap_or(1005)));
        prop_assert_eq!(c.closed_by, Some(ClosedBy::Client));
    }

    /// A function close: exactly 1000 and 1011 are a success; anything else is a 439.
    #[test]
    fn function_close_is_200_only_for_1000_and_1011(code in code(), reason in text()) {
        let c = classify(&EndReason::FunctionClosed { code, reason });
        let expected = match code {
            Some(1000 | 1011) => 200,
            _ => 439,
        };
        prop_assert_eq!(c.status_code.as_u16(), expected, "code {:?}", code);
        prop_assert_eq!(c.close_code, Some(code.unwrap_or(1005)));
        prop_assert_eq!(c.closed_by, Some(ClosedBy::Function));
    }

    /// A peer's reason that fits a close frame is recorded unchanged; a longer one (which no
    /// peer can send, but a caller could pass) is cut on a char boundary to a marked prefix.
    #[test]
    fn peer_close_reasons_are_kept_or_cut_to_a_prefix(
        code in code(),
        reason in text(),
        client in any::<bool>(),
    ) {
        let c = classify(&if client {
            EndReason::ClientClosed { code, reason: reason.clone() }
        } else {
            EndReason::FunctionClosed { code, reason: reason.clone() }
        });
        if reason.len() <= MAX_CLOSE_REASON {
            prop_assert_eq!(c.close_reason, reason);
        } else {
            prop_assert!(c.close_reason.ends_with("..."), "{:?}", c.close_reason);
            let kept = c.close_reason.trim_end_matches("...");
            prop_assert!(reason.starts_with(kept), "{:?} is not a prefix", kept);
        }
    }

    /// Protocol violations are the violator's failure whatever the detail: the client's is a
    /// 456 with scfsim's 1002/1007, the function's a 439 with 1011 to the client.
    #[test]
    fn protocol_errors_blame_the_violator(code in prop::sample::select(vec![1002u16, 1007]), detail in text()) {
        let c = classify(&EndReason::ClientProtocolError { code, detail: detail.clone() });
        prop_assert_eq!(c.status_code.as_u16(), 456);
        prop_assert_eq!(c.close_code, Some(code));
        prop_assert_eq!(c.closed_by, Some(ClosedBy::Gateway));
        let c = classify(&EndReason::FunctionProtocolError { code, detail });
        prop_assert_eq!(c.status_code.as_u16(), 439);
        prop_assert_eq!(c.close_code, Some(1011));
        prop_assert!(
            matches!(&c.closing.to_function, CloseStep::Send(Some(f)) if f.code == code),
            "{:?}",
            c.closing
        );
    }

    /// Message size: the sender decides 406 (client) or 407 (function), always with 1009.
    #[test]
    fn too_large_is_406_up_and_407_down(
        from in side(),
        size in prop::option::of(any::<u64>()),
        limit in any::<u64>(),
    ) {
        let c = classify(&EndReason::MessageTooLarge { from, size, limit });
        let expected = match from {
            Side::Client => 406,
            Side::Function => 407,
        };
        prop_assert_eq!(c.status_code.as_u16(), expected);
        prop_assert_eq!(c.close_code, Some(1009));
    }
}
