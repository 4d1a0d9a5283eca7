//! What a file is: magic-byte sniffing, the allow-list, and the match between the type a client
//! declares and what the bytes are. Pure; no I/O.

use crate::error::Error;

/// The media kinds, each with its own size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Image,
    Audio,
    Video,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// A container recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Jpeg,
    Png,
    Gif,
    WebP,
    /// ISO base media (`ftyp`): MP4 video or M4A audio.
    Mp4,
    /// Matroska with DocType `webm`: video or audio.
    WebM,
    /// Ogg whose first stream is Opus.
    OggOpus,
    /// MPEG-1/2 Layer III, optionally behind an ID3v2 tag.
    Mp3,
    /// Raw AAC in ADTS frames.
    Aac,
}

/// Bytes needed to sniff every container (WebM's DocType may sit a little way in).
pub const SNIFF_BYTES: usize = 64;

/// The types accepted, for error messages and docs.
pub const ALLOWED: &str = "image/jpeg, image/png, image/webp, image/gif, video/mp4, video/webm, \
                           audio/ogg (Opus), audio/mp4 (M4A/AAC), audio/aac, audio/mpeg (MP3), \
                           audio/webm";

/// The canonical declared types accepted (`GET /v1/media` publishes them for file pickers;
/// aliases such as `image/jpg` or `audio/x-m4a` are accepted too).
pub const ACCEPTED_TYPES: [&str; 11] = [
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "video/mp4",
    "video/webm",
    "audio/mp4",
    "audio/aac",
    "audio/webm",
    "audio/ogg",
    "audio/mpeg",
];

/// Recognise the container from the first bytes of a file (at least [`SNIFF_BYTES`] unless
/// the file is shorter). `None`: not on the allow-list, or not enough bytes.
pub fn sniff(head: &[u8]) -> Option<Container> {
    let at = |i: usize, m: &[u8]| head.len() >= i + m.len() && &head[i..i + m.len()] == m;
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        return Some(Container::Jpeg);
    }
    if at(0, b"\x89PNG\r\n\x1a\n") {
        return Some(Container::Png);
    }
    if at(0, b"GIF87a") || at(0, b"GIF89a") {
        return Some(Container::Gif);
    }
    if at(0, b"RIFF") && at(8, b"WEBP") {
        return Some(Container::WebP);
    }
    if at(4, b"ftyp") {
        // QuickTime (`qt  `) and HEIF/AVIF images share the box format but are not allowed.
        let brand = head.get(8..12)?;
        return match brand {
            b"qt  " | b"heic" | b"heix" | b"mif1" | b"msf1" | b"avif" | b"avis" | b"crx " => None,
            _ => Some(Container::Mp4),
        };
    }
    if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        // The EBML header carries DocType (0x4282): "webm" (not general Matroska).
        let doc = head.windows(2).position(|w| w == [0x42, 0x82])?;
        let size = *head.get(doc + 2)?;
        if size & 0x80 == 0 {
            return None;
        }
        let n = (size & 0x7F) as usize;
        return (head.get(doc + 3..doc + 3 + n)? == b"webm").then_some(Container::WebM);
    }
    if at(0, b"OggS") {
        // First page: 27-byte header, segment table, then the first packet.
        let segments = *head.get(26)? as usize;
        return at(27 + segments, b"OpusHead").then_some(Container::OggOpus);
    }
    if at(0, b"ID3") {
        return Some(Container::Mp3);
    }
    if head.len() >= 2 && head[0] == 0xFF {
        let b = head[1];
        if b & 0xE0 == 0xE0 {
            let layer = (b >> 1) & 0x3;
            let version = (b >> 3) & 0x3;
            if version != 1 && layer == 1 {
                return Some(Container::Mp3);
            }
            // ADTS: sync 0xFFF, layer 00.
            if b & 0xF6 == 0xF0 {
                return Some(Container::Aac);
            }
        }
    }
    None
}

/// A declared `Content-Type` without parameters, lower case, with common aliases folded.
pub fn normalize_declared(ct: &str) -> String {
    let base = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match base.as_str() {
        "image/jpg" | "image/pjpeg" => "image/jpeg".into(),
        "audio/mp3" | "audio/mpeg3" | "audio/x-mp3" | "audio/x-mpeg" => "audio/mpeg".into(),
        "audio/x-m4a" | "audio/m4a" => "audio/mp4".into(),
        "audio/opus" | "application/ogg" | "audio/x-ogg" => "audio/ogg".into(),
        "audio/x-aac" | "audio/aacp" => "audio/aac".into(),
        "" => "application/octet-stream".into(),
        _ => base,
    }
}

/// The kind a declared type names (to pick the size limit before any byte is read).
/// `None` for `application/octet-stream` (decided by sniffing) and unknown types.
pub fn declared_kind(declared: &str) -> Option<Kind> {
    let d = normalize_declared(declared);
    match d.split('/').next() {
        Some("image") => Some(Kind::Image),
        Some("audio") => Some(Kind::Audio),
        Some("video") => Some(Kind::Video),
        _ => None,
    }
}

/// Whether a declared type may be uploaded at all (checked before reading the body).
pub fn check_declared(declared: &str) -> Result<(), Error> {
    let d = normalize_declared(declared);
    let ok = d == "application/octet-stream" || ACCEPTED_TYPES.contains(&d.as_str());
    if ok {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(format!(
            "{d} is not accepted; allowed: {ALLOWED}"
        )))
    }
}

/// The type the media is stored and served as, and its kind: the sniffed container must be
/// what the declared type says (`application/octet-stream` takes the sniffed type).
pub fn resolve(declared: &str, sniffed: Option<Container>) -> Result<(&'static str, Kind), Error> {
    let d = normalize_declared(declared);
    let Some(c) = sniffed else {
        return Err(Error::UnsupportedMediaType(format!(
            "the content is not a supported image, audio or video file (declared {d}); \
             allowed: {ALLOWED}"
        )));
    };
    let any = d == "application/octet-stream";
    let out = match c {
        Container::Jpeg if any || d == "image/jpeg" => ("image/jpeg", Kind::Image),
        Container::Png if any || d == "image/png" => ("image/png", Kind::Image),
        Container::Gif if any || d == "image/gif" => ("image/gif", Kind::Image),
        Container::WebP if any || d == "image/webp" => ("image/webp", Kind::Image),
        Container::Mp4 if any || d == "video/mp4" => ("video/mp4", Kind::Video),
        Container::Mp4 if d == "audio/mp4" || d == "audio/aac" => ("audio/mp4", Kind::Audio),
        Container::WebM if any || d == "video/webm" => ("video/webm", Kind::Video),
        Container::WebM if d == "audio/webm" => ("audio/webm", Kind::Audio),
        Container::OggOpus if any || d == "audio/ogg" => ("audio/ogg", Kind::Audio),
        Container::Mp3 if any || d == "audio/mpeg" => ("audio/mpeg", Kind::Audio),
        Container::Aac if any || d == "audio/aac" => ("audio/aac", Kind::Audio),
        _ => {
            return Err(Error::UnsupportedMediaType(format!(
                "declared {d} but the content is {}",
                describe(c)
            )));
        }
    };
    Ok(out)
}

fn describe(c: Container) -> &'static str {
    match c {
        Container::Jpeg => "a JPEG image",
        Container::Png => "a PNG image",
        Container::Gif => "a GIF image",
        Container::WebP => "a WebP image",
        Container::Mp4 => "an MP4/M4A file",
        Container::WebM => "a WebM file",
        Container::OggOpus => "Ogg/Opus audio",
        Container::Mp3 => "MP3 audio",
        Container::Aac => "AAC (ADTS) audio",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_every_allowed_container() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0]),
            Some(Container::Jpeg)
        );
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR"),
            Some(Container::Png)
        );
        assert_eq!(sniff(b"GIF89a\x01\0\x01\0"), Some(Container::Gif));
        assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8 "), Some(Container::WebP));
        assert_eq!(sniff(b"\0\0\0\x18ftypisom\0\0\0\0"), Some(Container::Mp4));
        assert_eq!(sniff(b"\0\0\0\x18ftypM4A \0\0\0\0"), Some(Container::Mp4));
        assert_eq!(sniff(b"\0\0\0\x14ftypqt  \0\0\0\0"), None);
        assert_eq!(sniff(b"\0\0\0\x1cftypheic\0\0\0\0"), None);
        let webm = [
            0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x86, 0x81, 0x01, 0x42, 0x82, 0x84, b'w', b'e',
            b'b', b'm',
        ];
        assert_eq!(sniff(&webm), Some(Container::WebM));
        let mkv = [
            0x1A, 0x45, 0xDF, 0xA3, 0x9F, 0x42, 0x82, 0x88, b'm', b'a', b't', b'r', b'o', b's',
            b'k', b'a',
        ];
        assert_eq!(sniff(&mkv), None);
        let mut ogg = b"OggS\0\x02".to_vec();
        ogg.extend([0u8; 20]);
        ogg.push(1); // one segment
        ogg.push(19);
        ogg.extend(b"OpusHead\x01\x01");
        assert_eq!(sniff(&ogg), Some(Container::OggOpus));
        let mut vorbis = ogg.clone();
        vorbis[28..36].copy_from_slice(b"\x01vorbis\0");
        assert_eq!(sniff(&vorbis), None);
        assert_eq!(sniff(b"ID3\x04\0\0\0\0\0\0"), Some(Container::Mp3));
        assert_eq!(sniff(&[0xFF, 0xFB, 0x90, 0x64]), Some(Container::Mp3));
        assert_eq!(sniff(&[0xFF, 0xF1, 0x50, 0x80]), Some(Container::Aac));
        assert_eq!(sniff(b"<svg xmlns="), None);
        assert_eq!(sniff(b"%PDF-1.7"), None);
        assert_eq!(sniff(b""), None);
    }

    #[test]
    fn declared_types_are_normalised_and_checked() {
        assert_eq!(normalize_declared("audio/webm;codecs=opus"), "audio/webm");
        assert_eq!(normalize_declared("IMAGE/JPG"), "image/jpeg");
        assert_eq!(normalize_declared("audio/x-m4a"), "audio/mp4");
        assert_eq!(normalize_declared(""), "application/octet-stream");
        assert_eq!(declared_kind("video/mp4"), Some(Kind::Video));
        assert_eq!(declared_kind("application/octet-stream"), None);
        assert!(check_declared("image/png").is_ok());
        assert!(check_declared("audio/webm; codecs=opus").is_ok());
        let e = check_declared("image/svg+xml").unwrap_err();
        assert_eq!(e.code(), "unsupported_media_type");
        assert!(check_declared("text/html").is_err());
    }

    #[test]
    fn the_content_must_be_what_is_declared() {
        assert_eq!(
            resolve("image/png", Some(Container::Png)).unwrap(),
            ("image/png", Kind::Image)
        );
        assert_eq!(
            resolve("audio/mp4", Some(Container::Mp4)).unwrap(),
            ("audio/mp4", Kind::Audio)
        );
        assert_eq!(
            resolve("audio/webm;codecs=opus", Some(Container::WebM)).unwrap(),
            ("audio/webm", Kind::Audio)
        );
        assert_eq!(
            resolve("application/octet-stream", Some(Container::Mp4)).unwrap(),
            ("video/mp4", Kind::Video)
        );
        let spoof = resolve("image/png", Some(Container::Jpeg)).unwrap_err();
        assert_eq!(spoof.code(), "unsupported_media_type");
        assert!(spoof.to_string().contains("JPEG"), "{spoof}");
        assert!(resolve("video/mp4", Some(Container::Png)).is_err());
        assert!(resolve("image/png", None).is_err());
    }
}
