//! The protocol suite: every guarantee of PROTOCOL.md, checked through real HTTP and WebSocket
//! clients against the real `chat-server` binary.

mod support;

mod bad_input;
mod chats;
mod durability;
mod limits;
mod longpoll;
mod messaging;
mod presence;
mod receipts;
