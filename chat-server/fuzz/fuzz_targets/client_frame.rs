//! Fuzz the client frame parser: any bytes must give a frame or a clean protocol error — never
//! a panic — and whatever is accepted must satisfy the validation rules.
#![no_main]

use chat_server::model::MAX_ID;
use chat_server::protocol::{ClientFrame, MAX_CONTENT_BYTES, parse_client_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_frame(text) {
        Ok(ClientFrame::Message(m)) => {
            assert!(m.chat_id > 0 && m.chat_id <= MAX_ID);
            let len = m.content.as_deref().map_or(0, str::len);
            assert!(len <= MAX_CONTENT_BYTES);
            assert!(len > 0 || m.media_id.is_some() || m.media_url.as_deref().is_some_and(|u| !u.is_empty()));
        }
        Ok(ClientFrame::Sync(s)) => assert!(s.chat_id > 0 && s.limit != Some(0)),
        Ok(ClientFrame::PresenceSubscribe(p)) => assert!(p.user_ids.iter().all(|u| *u > 0 && *u <= MAX_ID)),
        Ok(_) => {}
        Err(e) => {
            assert!(matches!(e.code(), "invalid" | "too_large"), "unexpected code {}", e.code());
            let _ = chat_server::protocol::error_frame(&e, None);
        }
    }
});
