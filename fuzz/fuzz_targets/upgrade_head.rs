//! The gateway's upgrade-head parser (`client::parse`, through `scfsim_gateway::fuzzing`) on
//! arbitrary bytes, the way `ClientConn::read` calls it: on a growing buffer. It must never
//! panic; a complete head must be complete at the same length in any longer buffer and take no
//! more bytes than it was given; and whatever it accepts must go through the upgrade check, the
//! instance's request and the client's 101 without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scfsim_gateway::fuzzing::{handshake, parse_head, Head};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the client's first segment ends, as a read boundary.
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut) * data.len() / 256;
    let first = parse_head(&data[..cut]);
    let whole = parse_head(data);
    if let Head::Complete { used, .. } = &first {
        assert!(*used <= cut);
        match &whole {
            Head::Complete { used: again, .. } => assert_eq!(used, again),
            _ => panic!("complete in a prefix, not in the whole buffer"),
        }
    }
    if let Head::Complete { used, request } = whole {
        assert!(used <= data.len());
        handshake(&request);
    }
});
