//! The media part of the `Store` contract, on both implementations: the embedded SQLite store
//! and the ScyllaDB store against a real CQL server (`TERN_CQL_NODES`, default
//! `127.0.0.1:19042`, which `e2e/env/up.sh cassandra` starts), plus the schema upgrade from
//! version 1 (before media) to 2.
//!
//! ```sh
//! cargo test -p chat-server --test media_store
//! ```

mod support;

use chat_server::media::{MediaRecord, Poster, Rendition, RenditionState, Renditions, VariantInfo};
use chat_server::store::Store;
use chat_server::store::sqlite::SqliteStore;

fn record(id: &str, uploader: u64, created_at: i64) -> MediaRecord {
    MediaRecord {
        media_id: id.to_string(),
        uploader,
        content_type: "image/jpeg".into(),
        size: 1234,
        etag: "00ff".into(),
        width: Some(64),
        height: Some(48),
        duration_ms: None,
        thumbnail: Some(VariantInfo {
            content_type: "image/jpeg".into(),
            size: 99,
            etag: "11ee".into(),
        }),
        peaks: None,
        created_at,
        renditions: None,
    }
}

fn video(id: &str, created_at: i64) -> MediaRecord {
    MediaRecord {
        content_type: "video/mp4".into(),
        thumbnail: None,
        duration_ms: Some(2000),
        ..record(id, 7, created_at)
    }
}

/// Renditions are kept apart from the upload's row, replaced as a whole, returned by
/// `media`, and forgotten with the media; peaks are part of the upload's row.
async fn renditions_contract(s: &dyn Store) {
    let v = video(&id(20), 1_000);
    s.put_media(v.clone()).await.unwrap();
    assert_eq!(s.media(&id(20)).await.unwrap().unwrap().renditions, None);
    let mut r = Renditions::pending(1_000);
    s.set_media_renditions(&id(20), &r).await.unwrap();
    assert_eq!(
        s.media(&id(20)).await.unwrap().unwrap().renditions.as_ref(),
        Some(&r)
    );
    r.poster = Some(Poster {
        content_type: "image/jpeg".into(),
        width: 1280,
        height: 720,
        size: 5000,
        etag: "aa".into(),
    });
    r.variants.push(Rendition {
        name: "360p".into(),
        content_type: "video/mp4".into(),
        width: 640,
        height: 360,
        bitrate: 700_000,
        size: 175_000,
        etag: "bb".into(),
    });
    r.state = RenditionState::Ready;
    s.set_media_renditions(&id(20), &r).await.unwrap();
    let got = s.media(&id(20)).await.unwrap().unwrap();
    assert_eq!(got.renditions.as_ref(), Some(&r));
    assert_eq!(
        MediaRecord {
            renditions: None,
            ..got
        },
        v,
        "the upload's row is unchanged"
    );
    // Sending takes the current renditions along (the message carries the object as sent).
    s.link_media(&v, 300).await.unwrap();
    assert_eq!(s.media(&id(20)).await.unwrap().unwrap().renditions, Some(r));
    s.delete_media(&v).await.unwrap();
    assert_eq!(s.media(&id(20)).await.unwrap(), None);
    // A re-used id (never happens: ids are UUIDv7) would start without renditions.
    s.put_media(v.clone()).await.unwrap();
    assert_eq!(s.media(&id(20)).await.unwrap().unwrap().renditions, None);
    s.delete_media(&v).await.unwrap();

    let voice = MediaRecord {
        content_type: "audio/ogg".into(),
        peaks: Some((0..64).map(|i| i * 4).collect()),
        ..record(&id(21), 7, 1_000)
    };
    s.put_media(voice.clone()).await.unwrap();
    assert_eq!(s.media(&id(21)).await.unwrap(), Some(voice.clone()));
    s.delete_media(&voice).await.unwrap();
}

fn id(n: u32) -> String {
    format!("{n:032x}")
}

/// The ids `unsent_media(10_000, 100)` lists, sorted.
async fn unsent_ids(s: &dyn Store) -> Vec<String> {
    let mut ids: Vec<_> = s
        .unsent_media(10_000, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.media_id)
        .collect();
    ids.sort();
    ids
}

/// The contract every store keeps for media.
async fn media_contract(s: &dyn Store) {
    let a = record(&id(1), 7, 1_000);
    let b = record(&id(2), 7, 2_000);
    let c = record(&id(3), 8, 3_000);
    for m in [&a, &b, &c] {
        s.put_media(m.clone()).await.unwrap();
    }
    assert_eq!(s.media(&id(1)).await.unwrap(), Some(a.clone()));
    assert_eq!(s.media(&id(9)).await.unwrap(), None);
    assert!(s.media_chats(&id(1)).await.unwrap().is_empty());

    // Never sent, older than the cutoff: listed (all three before 10 000, two before 2 500).
    assert_eq!(unsent_ids(s).await, vec![id(1), id(2), id(3)]);
    assert_eq!(s.unsent_media(2_500, 100).await.unwrap().len(), 2);
    assert_eq!(s.unsent_media(10_000, 1).await.unwrap().len(), 1);

    // Sending links it (idempotently) and takes it off the unsent list.
    s.link_media(&a, 100).await.unwrap();
    s.link_media(&a, 100).await.unwrap();
    s.link_media(&a, 200).await.unwrap();
    let mut chats = s.media_chats(&id(1)).await.unwrap();
    chats.sort();
    assert_eq!(chats, vec![100, 200]);
    let unsent = unsent_ids(s).await;
    assert!(!unsent.contains(&id(1)), "{unsent:?}");
    assert_eq!(unsent.len(), 2);

    // Deleting forgets it entirely.
    s.delete_media(&b).await.unwrap();
    assert_eq!(s.media(&id(2)).await.unwrap(), None);
    assert_eq!(s.unsent_media(10_000, 100).await.unwrap().len(), 1);
    s.delete_media(&a).await.unwrap();
    assert!(s.media_chats(&id(1)).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_keeps_the_media_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), 16).unwrap();
    media_contract(&store).await;
    renditions_contract(&store).await;
    // Durable: visible after a reopen.
    store.put_media(record(&id(5), 1, 5)).await.unwrap();
    store.close().await;
    let store = SqliteStore::open(dir.path(), 16).unwrap();
    assert!(store.media(&id(5)).await.unwrap().is_some());
    store.close().await;
}

#[cfg(feature = "distributed")]
mod cql {
    use super::*;
    use chat_server::store::scylla::{ScyllaOptions, ScyllaStore};
    use chat_server::store::scylla_schema::{self, DEFAULT_BUCKET_SIZE, Replication};
    use support::cql::TestKeyspace;

    #[tokio::test]
    async fn scylla_keeps_the_media_contract() {
        let ks = TestKeyspace::create(DEFAULT_BUCKET_SIZE).await;
        let store = ks.store().await;
        media_contract(&store).await;
        renditions_contract(&store).await;
        drop(store);
        ks.drop_keyspace().await;
    }

    #[tokio::test]
    async fn a_version_1_keyspace_is_upgraded_by_setup() {
        let ks = TestKeyspace::create(DEFAULT_BUCKET_SIZE).await;
        let (s, name) = (&ks.session, &ks.name);
        // Pretend it was written by a binary from before media.
        s.query_unpaged(
            format!("UPDATE {name}.schema_version SET version = 1 WHERE component = 'store'"),
            (),
        )
        .await
        .unwrap();
        let refused = ScyllaStore::with_session(s.clone(), name, ScyllaOptions::default()).await;
        assert!(
            refused.is_err(),
            "a version 1 keyspace must be set up first"
        );
        scylla_schema::setup(s, name, &Replication::Simple { factor: 1 })
            .await
            .unwrap();
        let v = scylla_schema::read_version(s, name).await.unwrap().unwrap();
        assert_eq!(v.version, scylla_schema::SCHEMA_VERSION);
        assert_eq!(v.version, 3);
        let store = ks.store().await;
        store.put_media(record(&id(1), 1, 1)).await.unwrap();
        assert!(store.media(&id(1)).await.unwrap().is_some());
        drop(store);
        ks.drop_keyspace().await;
    }
}
