//! Regression guards for the pure parts of the hot path (issue #13): encoding a `message`
//! frame, joining queued frames into one batched WebSocket message, planning a stored batch (`plane::pipeline`), the hub's fan-out to 1000 member
//! connections, and one group commit of the embedded store (a real fsync, so its numbers
//! follow the disk).
//!
//!   cargo bench -p chat-server --bench hot_paths
//!   cargo bench -p chat-server --bench hot_paths -- --save-baseline before   # then
//!   cargo bench -p chat-server --bench hot_paths -- --baseline before        # compare

use chat_server::hub::{Hub, frame};
use chat_server::members::ChatMembers;
use chat_server::model::{ChatType, Message, NewMessage};
use chat_server::plane::pipeline::{self, Stored};
use chat_server::protocol;
use chat_server::store::sqlite::SqliteStore;
use chat_server::store::{Appended, Store};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

fn message(chat_id: u64, seq: u64) -> Message {
    Message {
        message_id: format!("0193a0b2-7c1e-7d4f-8a9b-{seq:012x}"),
        chat_id,
        seq,
        sender_id: 42,
        content: "The quick brown fox jumps over the lazy dog — a typical chat line of some 150 \
                  bytes, with a bit of \"quoting\" and unicode: ünïcödé ✓"
            .into(),
        media_url: None,
        media: None,
        client_msg_id: Some(format!("c-{seq}")),
        created_at: 1_764_470_000_000 + seq as i64,
    }
}

fn encode(c: &mut Criterion) {
    let m = message(7, 1234);
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("message_frame", |b| {
        b.iter(|| protocol::message_frame(black_box(&m)))
    });
    // A batched WebSocket message (`/ws?…&batch=1`): 16 queued frames joined, one per line.
    let queued: Vec<_> = (0..16)
        .map(|i| frame(protocol::message_frame(&message(7, i))))
        .collect();
    g.throughput(Throughput::Elements(16));
    g.bench_function("join_16_frames", |b| {
        b.iter_batched(
            || queued.clone(),
            |f| chat_server::ws::join_frames(black_box(f)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn plan(c: &mut Criterion) {
    // A full shard batch: 512 results over 256 chats of 2 members, a few resends.
    let results: Vec<chat_server::error::Result<Appended>> = (0..512u64)
        .map(|i| {
            Ok(Appended {
                message: Arc::new(message(i % 256, i / 256 + 1)),
                duplicate: i % 50 == 0,
            })
        })
        .collect();
    let members: HashMap<u64, Arc<ChatMembers>> = (0..256u64)
        .map(|c| {
            (
                c,
                Arc::new(ChatMembers {
                    kind: ChatType::Direct,
                    users: vec![42, 1000 + c],
                }),
            )
        })
        .collect();
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(512));
    g.bench_function("plan_512", |b| {
        b.iter(|| {
            let stored: Vec<Stored> = results
                .iter()
                .map(|r| Stored {
                    result: r,
                    sent_id: None,
                })
                .collect();
            let chats = pipeline::chats(&stored);
            let plan = pipeline::plan(&stored, &members);
            black_box((chats, plan.push_events(|u| u % 2 == 0)))
        })
    });
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    // 1000 members with one connection each; queues drained between iterations.
    let hub = Hub::new(1 << 16);
    let mut rxs = Vec::new();
    for u in 0..1000u64 {
        let (_, rx, _) = hub.register(u, frame("{}".to_string()));
        rxs.push(rx);
    }
    let users: Vec<u64> = (0..1000).collect();
    let f = frame(protocol::message_frame(&message(7, 1)));
    let mut g = c.benchmark_group("hub");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("deliver_1000", |b| {
        b.iter_batched(
            || {
                for rx in &mut rxs {
                    while rx.try_recv().is_ok() {}
                }
            },
            |_| hub.deliver(black_box(&users), &f, None),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), 512).unwrap();
    let chats: Vec<u64> = rt.block_on(async {
        let mut out = Vec::new();
        for u in 0..64u64 {
            out.push(store.create_direct(1, 100 + u).await.unwrap().0.chat_id);
        }
        out
    });
    let mut n = 0u64;
    let mut g = c.benchmark_group("sqlite");
    g.throughput(Throughput::Elements(64));
    g.sample_size(30);
    g.bench_function("append_batch_64_chats", |b| {
        b.iter(|| {
            let batch: Vec<NewMessage> = chats
                .iter()
                .map(|&chat_id| {
                    n += 1;
                    NewMessage {
                        chat_id,
                        sender_id: 1,
                        content: "hello there, a short chat line".into(),
                        media_url: None,
                        media: None,
                        client_msg_id: Some(format!("b{n}")),
                        message_id: None,
                    }
                })
                .collect();
            let out = rt.block_on(store.append_batch(batch));
            assert!(out.iter().all(|r| r.is_ok()));
        })
    });
    g.finish();
    rt.block_on(store.close());
}

criterion_group!(benches, encode, plan, fan_out, commit);
criterion_main!(benches);
