//! Video posters and renditions, voice-note waveforms: real files made by ffmpeg in the test,
//! uploaded to the real binary, processed by its background worker, fetched back and checked
//! with the server's own container parser.
//!
//! ```sh
//! cargo test -p chat-server --test media_transcode                 # local blob directory
//! eval "$(e2e/env/env.sh)"; TERN_TEST_MEDIA=s3 cargo test -p chat-server --test media_transcode
//! ```
//! Needs `ffmpeg` (Debian's package). Without it the tests say so and pass, unless `CI` is
//! set: then they fail. The no-ffmpeg path is tested with `--media-ffmpeg /nonexistent`.

mod support;

use chat_server::media::container;
use chat_server::media::sniff::Container;
use serde_json::{Value, json};
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Api, TestServer};

fn s3() -> bool {
    std::env::var("TERN_TEST_MEDIA").is_ok_and(|v| v == "s3")
}

/// Whether ffmpeg runs here; without it, outside CI, the test is skipped with a message.
fn have_ffmpeg(test: &str) -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: ffmpeg is missing and CI is set: install it (apt-get install -y ffmpeg)"
        );
        eprintln!("SKIPPED {test}: ffmpeg is not installed (apt-get install -y ffmpeg)");
    }
    ok
}

/// A server with the media flags of this run (S3 when asked) and `extra`.
async fn server(extra: &[&str]) -> TestServer {
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    if s3() {
        let var = |n: &str| {
            std::env::var(n).unwrap_or_else(|_| panic!("{n} is needed for TERN_TEST_MEDIA=s3"))
        };
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        args.extend([
            "--media-s3-endpoint".into(),
            var("TERN_S3_ENDPOINT"),
            "--media-s3-bucket".into(),
            var("TERN_S3_BUCKET"),
            "--media-s3-allow-http".into(),
            "--media-s3-prefix".into(),
            format!("test-{t:x}{:x}", std::process::id()),
        ]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start_with(&refs).await
}

/// Run ffmpeg with `args` (output file last) and return the file's bytes.
fn ffmpeg(dir: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let out = dir.join(name);
    let o = Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&out)
        .output()
        .expect("ffmpeg runs");
    assert!(
        o.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::read(out).unwrap()
}

/// 2 s of 1280x720 H.264/AAC at about 13 Mbit/s (noise defeats compression): above the
/// default threshold, so both 360p and 720p are made.
fn video_720p(dir: &Path) -> Vec<u8> {
    ffmpeg(
        dir,
        "v720.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25:duration=2",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:duration=2",
            "-vf",
            "noise=alls=30:allf=t",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-shortest",
            "-movflags",
            "+faststart",
        ],
    )
}

/// A 2 s Opus voice note that gets louder, as MediaRecorder-less apps send them.
fn voice_note(dir: &Path) -> Vec<u8> {
    ffmpeg(
        dir,
        "voice.ogg",
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=300:duration=2",
            "-af",
            "volume='t/2':eval=frame",
            "-c:a",
            "libopus",
            "-b:a",
            "32k",
        ],
    )
}

async fn upload(api: &Api, content_type: &str, body: Vec<u8>) -> Value {
    let r = api
        .http
        .post(format!("{}/v1/media", api.base))
        .bearer_auth(&api.token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "upload of {content_type}: {v}");
    v
}

async fn fetch(api: &Api, path: &str) -> (u16, String, Vec<u8>) {
    let r = api
        .http
        .get(format!("{}{path}", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.bytes().await.unwrap().to_vec())
}

/// Poll `GET /v1/media/{id}/info` until `processing` is gone.
async fn settled(api: &Api, id: &str, within: Duration) -> Value {
    let t = Instant::now();
    loop {
        let (s, v) = api.get(&format!("/v1/media/{id}/info")).await;
        assert_eq!(s, 200, "{v}");
        if v.get("processing").is_none() {
            return v;
        }
        assert!(
            t.elapsed() < within,
            "still processing after {within:?}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mp4_size(bytes: &[u8]) -> (u32, u32, u64) {
    let info = container::probe(Container::Mp4, &mut Cursor::new(bytes)).expect("a valid MP4");
    (
        info.width.unwrap(),
        info.height.unwrap(),
        info.duration_ms.unwrap(),
    )
}

#[tokio::test]
async fn a_video_gets_a_poster_and_lower_renditions() {
    if !have_ffmpeg("a_video_gets_a_poster_and_lower_renditions") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let original = video_720p(dir.path());
    let srv = server(&[]).await;
    let (a, b) = (srv.api(1), srv.api(2));
    let (s, cfg) = a.get("/v1/media").await;
    assert_eq!(s, 200, "{cfg}");
    assert_eq!(cfg["video_renditions"], true, "{cfg}");
    assert!(
        cfg["accept"]
            .as_array()
            .unwrap()
            .contains(&json!("video/mp4"))
    );

    let up = upload(&a, "video/mp4", original.clone()).await;
    let id = up["media_id"].as_str().unwrap().to_string();
    assert_eq!(up["variants"], json!([]), "{up}");
    assert_eq!(up["processing"], true, "{up}");
    assert_eq!(
        (up["width"].as_u64(), up["height"].as_u64()),
        (Some(1280), Some(720))
    );

    let started = Instant::now();
    let v = settled(&a, &id, Duration::from_secs(180)).await;
    eprintln!(
        "transcode of a 2 s 1280x720 video (poster + 360p + 720p): {} ms",
        started.elapsed().as_millis()
    );
    let poster = &v["poster"];
    assert_eq!(poster["content_type"], "image/jpeg", "{v}");
    assert_eq!(
        (poster["width"].as_u64(), poster["height"].as_u64()),
        (Some(1280), Some(720))
    );
    let names: Vec<&str> = v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["360p", "720p"], "{v}");

    // The poster is a JPEG of the announced size.
    let (s, ct, jpeg) = fetch(&a, poster["url"].as_str().unwrap()).await;
    assert_eq!((s, ct.as_str()), (200, "image/jpeg"));
    let img = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (1280, 720));

    // Each rendition is an MP4 of the announced size, lighter than the original.
    for (r, (w, h)) in v["variants"]
        .as_array()
        .unwrap()
        .iter()
        .zip([(640, 360), (1280, 720)])
    {
        assert_eq!(r["content_type"], "video/mp4");
        assert_eq!(
            (r["width"].as_u64(), r["height"].as_u64()),
            (Some(w), Some(h)),
            "{r}"
        );
        let (s, ct, bytes) = fetch(&a, r["url"].as_str().unwrap()).await;
        assert_eq!((s, ct.as_str()), (200, "video/mp4"));
        assert_eq!(bytes.len() as u64, r["size"].as_u64().unwrap());
        let (pw, ph, ms) = mp4_size(&bytes);
        assert_eq!((pw, ph), (w as u32, h as u32));
        assert!((1900..=2100).contains(&ms), "{ms} ms");
        assert!(
            bytes.len() < original.len() / 2,
            "{} of {}",
            bytes.len(),
            original.len()
        );
        assert!(r["bitrate"].as_u64().unwrap() < 4_000_000, "{r}");
    }
    // The original is still served as uploaded.
    let (s, _, bytes) = fetch(&a, &format!("/v1/media/{id}")).await;
    assert_eq!((s, bytes.len()), (200, original.len()));

    // Sent now, the message carries the renditions; a member reads them, a stranger does not.
    let chat = a.direct(2).await;
    let (s, m) = a
        .post(
            &format!("/v1/chats/{chat}/messages"),
            json!({"content": "", "media_id": id, "client_msg_id": "v1"}),
        )
        .await;
    assert!(s == 200 || s == 201, "{m}");
    let page = b.history(chat, "").await;
    let media = &page["messages"][0]["media"];
    assert_eq!(media["variants"][0]["name"], "360p", "{page}");
    assert_eq!(
        fetch(&b, media["variants"][0]["url"].as_str().unwrap())
            .await
            .0,
        200
    );
    assert_eq!(
        fetch(&srv.api(3), &format!("/v1/media/{id}?variant=360p"))
            .await
            .0,
        403
    );
    assert_eq!(srv.api(3).get(&format!("/v1/media/{id}/info")).await.0, 403);
    // Unknown variants are 404, bad names 400; signed URLs work per rendition.
    assert_eq!(
        fetch(&a, &format!("/v1/media/{id}?variant=1080p")).await.0,
        404
    );
    assert_eq!(
        fetch(&a, &format!("/v1/media/{id}?variant=..%2Fmain"))
            .await
            .0,
        400
    );
    let (s, signed) = b.get(&format!("/v1/media/{id}/url?variant=720p")).await;
    assert_eq!(s, 200, "{signed}");
    let r = reqwest::get(format!("{}{}", b.base, signed["url"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.bytes().await.unwrap().len() as u64,
        v["variants"][1]["size"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_voice_note_gets_its_waveform_and_keeps_its_format() {
    if !have_ffmpeg("a_voice_note_gets_its_waveform_and_keeps_its_format") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ogg = voice_note(dir.path());
    let srv = server(&[]).await;
    let a = srv.api(1);
    let up = upload(&a, "audio/ogg", ogg.clone()).await;
    let peaks: Vec<u64> = up["peaks"]
        .as_array()
        .unwrap_or_else(|| panic!("no peaks: {up}"))
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert_eq!(peaks.len(), 64);
    assert_eq!(peaks.iter().max(), Some(&255));
    assert!(peaks.iter().all(|p| *p <= 255));
    // It gets louder: the second half is louder than the first.
    let (first, second): (u64, u64) = (peaks[..32].iter().sum(), peaks[32..].iter().sum());
    assert!(second > first * 2, "{peaks:?}");
    assert!(
        up.get("variants").is_none(),
        "audio has no renditions: {up}"
    );
    let (s, ct, bytes) = fetch(&a, up["url"].as_str().unwrap()).await;
    assert_eq!((s, ct.as_str(), bytes), (200, "audio/ogg", ogg));
    let (_, info) = a
        .get(&format!(
            "/v1/media/{}/info",
            up["media_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(info["peaks"], up["peaks"]);
}

#[tokio::test]
async fn a_corrupt_video_keeps_its_original_and_lists_no_renditions() {
    if !have_ffmpeg("a_corrupt_video_keeps_its_original_and_lists_no_renditions") {
        return;
    }
    // A container that parses (moov, a 1280x720 track, 4 s) around nothing decodable.
    let mut bogus = support::media::mp4(true, 4000, 1280, 720);
    bogus.extend(support::media::boxed(b"mdat", &vec![0x5a; 4_000_000]));
    let srv = server(&[]).await;
    let a = srv.api(1);
    let up = upload(&a, "video/mp4", bogus.clone()).await;
    let id = up["media_id"].as_str().unwrap();
    assert_eq!(up["processing"], true, "{up}");
    let v = settled(&a, id, Duration::from_secs(60)).await;
    assert_eq!(v["variants"], json!([]), "{v}");
    assert!(v.get("poster").is_none(), "{v}");
    let (s, _, bytes) = fetch(&a, &format!("/v1/media/{id}")).await;
    assert_eq!((s, bytes.len()), (200, bogus.len()));
    assert_eq!(
        fetch(&a, &format!("/v1/media/{id}?variant=poster")).await.0,
        404
    );
    assert!(
        srv.log().contains("video processing failed"),
        "the failure is logged"
    );
}

#[tokio::test]
async fn without_ffmpeg_uploads_still_work() {
    // Files are made with ffmpeg when it is here; the server is told to use a missing one.
    let (video, voice) = if Command::new("ffmpeg").arg("-version").output().is_ok() {
        let dir = tempfile::tempdir().unwrap();
        (video_720p(dir.path()), voice_note(dir.path()))
    } else {
        (
            support::media::mp4(true, 2000, 1280, 720),
            support::media::ogg_opus(2000),
        )
    };
    let srv = server(&["--media-ffmpeg", "/nonexistent/ffmpeg"]).await;
    let a = srv.api(1);
    let (s, cfg) = a.get("/v1/media").await;
    assert_eq!(s, 200);
    assert_eq!(
        (&cfg["video_renditions"], &cfg["voice_peaks"]),
        (&json!(false), &json!(false)),
        "{cfg}"
    );
    let up = upload(&a, "video/mp4", video.clone()).await;
    assert_eq!(up["variants"], json!([]), "{up}");
    assert!(
        up.get("processing").is_none() && up.get("poster").is_none(),
        "{up}"
    );
    let id = up["media_id"].as_str().unwrap();
    let (_, info) = a.get(&format!("/v1/media/{id}/info")).await;
    assert_eq!(info["variants"], json!([]));
    assert_eq!(
        fetch(&a, &format!("/v1/media/{id}")).await.2.len(),
        video.len()
    );
    let up = upload(&a, "audio/ogg", voice).await;
    assert!(up.get("peaks").is_none(), "{up}");
}
