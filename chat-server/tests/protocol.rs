//! The protocol suite: every guarantee of PROTOCOL.md, checked through real HTTP and WebSocket
//! clients against the real `chat-server` binary. One file per area, in `tests/protocol/`.

mod support;

mod protocol {
    mod bad_input;
    mod chat_events;
    mod chats;
    mod devices;
    mod durability;
    mod limits;
    mod longpoll;
    mod messaging;
    mod names;
    mod presence;
    mod receipts;
}
