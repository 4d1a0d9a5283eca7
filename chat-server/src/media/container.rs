//! Duration (and video dimensions) read from audio/video containers, without decoding: MP4/M4A
//! boxes, WebM (EBML), Ogg/Opus pages, MP3 and ADTS frames. Each reader works on any
//! `Read + Seek` (a spooled upload, or a byte slice in tests) and reads only headers.

use super::sniff::Container;
use std::io::{self, Read, Seek, SeekFrom};

/// What a container says about its content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AvInfo {
    pub duration_ms: Option<u64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

/// Read what the container tells. Errors mean a truncated or corrupt file.
pub fn probe<R: Read + Seek>(c: Container, r: &mut R) -> io::Result<AvInfo> {
    match c {
        Container::Mp4 => mp4(r),
        Container::WebM => webm(r),
        Container::OggOpus => ogg_opus(r),
        Container::Mp3 => mp3(r),
        Container::Aac => adts(r),
        _ => Ok(AvInfo::default()),
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn len_of<R: Seek>(r: &mut R) -> io::Result<u64> {
    let end = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    Ok(end)
}

fn read_n<R: Read>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    let mut b = vec![0; n];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn be(b: &[u8]) -> u64 {
    b.iter().fold(0, |a, x| (a << 8) | *x as u64)
}

// ---- MP4 / M4A ---------------------------------------------------------------------------

/// One box header at the current position: (type, payload start, payload end).
fn mp4_box<R: Read + Seek>(r: &mut R, end: u64) -> io::Result<Option<([u8; 4], u64, u64)>> {
    let start = r.stream_position()?;
    if start + 8 > end {
        return Ok(None);
    }
    let h = read_n(r, 8)?;
    let mut size = be(&h[0..4]);
    let kind = [h[4], h[5], h[6], h[7]];
    let mut header = 8;
    if size == 1 {
        size = be(&read_n(r, 8)?);
        header = 16;
    } else if size == 0 {
        size = end - start;
    }
    if size < header || start + size > end {
        return Err(bad("MP4 box runs past its parent (truncated file?)"));
    }
    Ok(Some((kind, start + header, start + size)))
}

/// Per-track facts of a fragmented MP4 (MediaRecorder in Safari/Chrome writes one with a
/// zero `mvhd` duration): timescale (`mdhd`), default sample duration (`trex`), and how far its
/// fragments reach (`tfdt` + `trun` sample durations).
#[derive(Default)]
struct Fragments {
    timescale: std::collections::HashMap<u32, u64>,
    default_duration: std::collections::HashMap<u32, u64>,
    reached: std::collections::HashMap<u32, u64>,
}

fn mp4<R: Read + Seek>(r: &mut R) -> io::Result<AvInfo> {
    let len = len_of(r)?;
    let mut info = AvInfo::default();
    let mut frags = Fragments::default();
    let mut found_moov = false;
    let mut pos = 0;
    while pos < len {
        r.seek(SeekFrom::Start(pos))?;
        let Some((kind, body, next)) = mp4_box(r, len)? else {
            break;
        };
        match &kind {
            b"moov" => {
                found_moov = true;
                mp4_moov(r, body, next, &mut info, &mut frags)?;
            }
            b"moof" => mp4_moof(r, body, next, &mut frags)?,
            _ => {}
        }
        pos = next;
    }
    if !found_moov {
        return Err(bad("MP4 without a moov box (truncated or not finished?)"));
    }
    if info.duration_ms.is_none() {
        info.duration_ms = frags
            .reached
            .iter()
            .filter_map(|(track, end)| {
                let ts = *frags.timescale.get(track)?;
                (ts > 0).then(|| end * 1000 / ts)
            })
            .max();
    }
    Ok(info)
}

/// The child boxes of `[start, end)`: (type, payload start, end).
fn mp4_children<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
) -> io::Result<Vec<([u8; 4], u64, u64)>> {
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        r.seek(SeekFrom::Start(pos))?;
        let Some(b) = mp4_box(r, end)? else { break };
        pos = b.2;
        out.push(b);
    }
    Ok(out)
}

fn mp4_moov<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    info: &mut AvInfo,
    frags: &mut Fragments,
) -> io::Result<()> {
    for (kind, body, next) in mp4_children(r, start, end)? {
        match &kind {
            b"mvhd" => {
                r.seek(SeekFrom::Start(body))?;
                let v = read_n(r, 1)?[0];
                let (timescale, duration) = if v == 1 {
                    let b = read_n(r, 3 + 16 + 12)?;
                    (be(&b[19..23]), be(&b[23..31]))
                } else {
                    let b = read_n(r, 3 + 8 + 8)?;
                    (be(&b[11..15]), be(&b[15..19]))
                };
                if timescale > 0 && duration > 0 && duration != u32::MAX as u64 {
                    info.duration_ms = Some(duration * 1000 / timescale);
                }
            }
            b"trak" => {
                if let Some((w, h)) = mp4_trak(r, body, next, frags)? {
                    info.width.get_or_insert(w);
                    info.height.get_or_insert(h);
                }
            }
            b"mvex" => {
                for (k, b, _) in mp4_children(r, body, next)? {
                    if &k == b"trex" {
                        r.seek(SeekFrom::Start(b + 4))?;
                        let t = read_n(r, 12)?;
                        frags
                            .default_duration
                            .insert(be(&t[0..4]) as u32, be(&t[8..12]));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The display size of a video track (from `tkhd`), `None` for other tracks; records the
/// track's timescale (`mdhd`) for fragmented files.
fn mp4_trak<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    frags: &mut Fragments,
) -> io::Result<Option<(u32, u32)>> {
    let mut size = None;
    let mut video = false;
    let mut track = None;
    let mut timescale = None;
    for (kind, body, next) in mp4_children(r, start, end)? {
        match &kind {
            b"tkhd" => {
                r.seek(SeekFrom::Start(body))?;
                let v = read_n(r, 1)?[0];
                let head = read_n(r, if v == 1 { 3 + 20 } else { 3 + 12 })?;
                track = Some(be(&head[head.len() - 4..]) as u32);
                let skip = if v == 1 { 12 + 52 } else { 8 + 52 };
                r.seek(SeekFrom::Current(skip))?;
                let b = read_n(r, 8)?;
                size = Some(((be(&b[0..4]) >> 16) as u32, (be(&b[4..8]) >> 16) as u32));
            }
            b"mdia" => {
                for (k, b, _) in mp4_children(r, body, next)? {
                    match &k {
                        b"hdlr" => {
                            r.seek(SeekFrom::Start(b + 8))?;
                            video = &read_n(r, 4)?[..] == b"vide";
                        }
                        b"mdhd" => {
                            r.seek(SeekFrom::Start(b))?;
                            let v = read_n(r, 1)?[0];
                            let h = read_n(r, if v == 1 { 3 + 16 + 4 } else { 3 + 8 + 4 })?;
                            timescale = Some(be(&h[h.len() - 4..]));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let (Some(t), Some(ts)) = (track, timescale) {
        frags.timescale.insert(t, ts);
    }
    Ok(if video { size } else { None })
}

/// A movie fragment: for each `traf`, where its samples end on the track's timeline.
fn mp4_moof<R: Read + Seek>(
    r: &mut R,
    start: u64,
    end: u64,
    frags: &mut Fragments,
) -> io::Result<()> {
    for (kind, body, next) in mp4_children(r, start, end)? {
        if &kind != b"traf" {
            continue;
        }
        let mut track = None;
        let mut default = None;
        let mut base = None;
        let mut total = 0u64;
        for (k, b, _) in mp4_children(r, body, next)? {
            r.seek(SeekFrom::Start(b))?;
            match &k {
                b"tfhd" => {
                    let h = read_n(r, 8)?;
                    let flags = be(&h[1..4]);
                    let t = be(&h[4..8]) as u32;
                    track = Some(t);
                    let mut skip = 0;
                    if flags & 0x01 != 0 {
                        skip += 8;
                    }
                    if flags & 0x02 != 0 {
                        skip += 4;
                    }
                    if flags & 0x08 != 0 {
                        r.seek(SeekFrom::Current(skip))?;
                        default = Some(be(&read_n(r, 4)?));
                    }
                }
                b"tfdt" => {
                    let v = read_n(r, 4)?[0];
                    base = Some(be(&read_n(r, if v == 1 { 8 } else { 4 })?));
                }
                b"trun" => {
                    let h = read_n(r, 8)?;
                    let flags = be(&h[1..4]);
                    let count = be(&h[4..8]);
                    let mut skip = 0;
                    if flags & 0x001 != 0 {
                        skip += 4;
                    }
                    if flags & 0x004 != 0 {
                        skip += 4;
                    }
                    r.seek(SeekFrom::Current(skip))?;
                    let fields = [0x100u64, 0x200, 0x400, 0x800]
                        .iter()
                        .filter(|f| flags & **f != 0)
                        .count() as i64;
                    if flags & 0x100 != 0 {
                        let per = (fields * 4) as usize;
                        for _ in 0..count.min(10_000_000) {
                            let s = read_n(r, per)?;
                            total += be(&s[0..4]);
                        }
                    } else {
                        let d = default
                            .or_else(|| track.and_then(|t| frags.default_duration.get(&t).copied()))
                            .unwrap_or(0);
                        total += count * d;
                    }
                }
                _ => {}
            }
        }
        if let Some(t) = track {
            let reached = frags.reached.entry(t).or_insert(0);
            let from = base.unwrap_or(*reached);
            *reached = (*reached).max(from + total);
        }
    }
    Ok(())
}

// ---- WebM (EBML) -------------------------------------------------------------------------

/// An EBML variable-length integer: (value, length). `marker` keeps the length bit (ids).
fn vint<R: Read>(r: &mut R, marker: bool) -> io::Result<(u64, usize)> {
    let first = read_n(r, 1)?[0];
    let n = first.leading_zeros() as usize + 1;
    if n > 8 {
        return Err(bad("bad EBML number"));
    }
    let mut v = if marker {
        first as u64
    } else {
        (first as u64) & ((1u64 << (8 - n)) - 1)
    };
    for b in read_n(r, n - 1)? {
        v = (v << 8) | b as u64;
    }
    Ok((v, n))
}

const UNKNOWN: u64 = u64::MAX;

fn ebml_element<R: Read>(r: &mut R) -> io::Result<(u64, u64)> {
    let (id, _) = vint(r, true)?;
    let (size, n) = vint(r, false)?;
    let all_ones = (1u64 << (7 * n)) - 1;
    Ok((id, if size == all_ones { UNKNOWN } else { size }))
}

const EBML: u64 = 0x1A45DFA3;
const SEGMENT: u64 = 0x18538067;
const INFO: u64 = 0x1549A966;
const TIMECODE_SCALE: u64 = 0x2AD7B1;
const DURATION: u64 = 0x4489;
const TRACKS: u64 = 0x1654AE6B;
const TRACK_ENTRY: u64 = 0xAE;
const VIDEO: u64 = 0xE0;
const PIXEL_WIDTH: u64 = 0xB0;
const PIXEL_HEIGHT: u64 = 0xBA;
const CLUSTER: u64 = 0x1F43B675;
const CLUSTER_TIMECODE: u64 = 0xE7;
const SIMPLE_BLOCK: u64 = 0xA3;
const BLOCK_GROUP: u64 = 0xA0;
const BLOCK: u64 = 0xA1;

/// WebM: `Info/Duration × TimecodeScale`, or, when a live recorder (MediaRecorder) left no
/// Duration, the timecode of the last block; `Tracks/TrackEntry/Video` pixel size.
/// Containers are walked flat (children of Segment, Info, Tracks, TrackEntry, Video, Cluster
/// and BlockGroup are read in place), so unknown-size Segments and Clusters work.
fn webm<R: Read + Seek>(r: &mut R) -> io::Result<AvInfo> {
    let len = len_of(r)?;
    let mut r = io::BufReader::new(r);
    let (id, size) = ebml_element(&mut r)?;
    if id != EBML || size == UNKNOWN {
        return Err(bad("not an EBML file"));
    }
    r.seek_relative(size as i64)?;
    let mut info = AvInfo::default();
    let mut scale: u64 = 1_000_000;
    let mut duration: Option<f64> = None;
    let mut cluster_tc: u64 = 0;
    let mut last_tc: Option<u64> = None;
    let mut seen_segment = false;
    let mut seen_tracks = false;
    loop {
        let pos = r.stream_position()?;
        if pos >= len {
            break;
        }
        let (id, size) = ebml_element(&mut r)?;
        let body = r.stream_position()?;
        if size != UNKNOWN && body + size > len && id != SEGMENT && id != CLUSTER {
            return Err(bad("WebM element runs past the end (truncated file?)"));
        }
        match id {
            SEGMENT => seen_segment = true,
            TRACKS => seen_tracks = true,
            INFO | TRACK_ENTRY | VIDEO | BLOCK_GROUP => {}
            CLUSTER => {
                if duration.is_some() && seen_tracks {
                    break; // everything needed is known; no need to walk the blocks
                }
            }
            TIMECODE_SCALE => scale = be(&read_n(&mut r, size as usize)?),
            DURATION => {
                let b = read_n(&mut r, size as usize)?;
                duration = match b.len() {
                    4 => Some(f32::from_bits(be(&b) as u32) as f64),
                    8 => Some(f64::from_bits(be(&b))),
                    _ => None,
                };
            }
            PIXEL_WIDTH => info.width = Some(be(&read_n(&mut r, size as usize)?) as u32),
            PIXEL_HEIGHT => info.height = Some(be(&read_n(&mut r, size as usize)?) as u32),
            CLUSTER_TIMECODE => cluster_tc = be(&read_n(&mut r, size as usize)?),
            SIMPLE_BLOCK | BLOCK => {
                let (_track, n) = vint(&mut r, false)?;
                let b = read_n(&mut r, 2)?;
                let rel = i16::from_be_bytes([b[0], b[1]]) as i64;
                let t = (cluster_tc as i64 + rel).max(0) as u64;
                last_tc = Some(last_tc.map_or(t, |l| l.max(t)));
                r.seek_relative(size as i64 - n as i64 - 2)?;
            }
            _ => {
                if size == UNKNOWN {
                    return Err(bad("unknown-size WebM element where none is allowed"));
                }
                r.seek_relative(size as i64)?;
            }
        }
        if !seen_segment {
            return Err(bad("WebM without a Segment"));
        }
    }
    info.duration_ms = match (duration, last_tc) {
        (Some(d), _) if d > 0.0 => Some((d * scale as f64 / 1e6) as u64),
        (_, Some(t)) => Some(t * scale / 1_000_000),
        _ => None,
    };
    if info.height.is_none() {
        info.width = None;
    }
    Ok(info)
}

// ---- Ogg / Opus --------------------------------------------------------------------------

/// Ogg/Opus: the granule position (48 kHz samples) of the last page minus the pre-skip.
fn ogg_opus<R: Read + Seek>(r: &mut R) -> io::Result<AvInfo> {
    let len = len_of(r)?;
    let head = read_n(r, (len.min(512)) as usize)?;
    if head.len() < 28 || &head[0..4] != b"OggS" {
        return Err(bad("not an Ogg file"));
    }
    let segs = head[26] as usize;
    let p = 27 + segs;
    if head.len() < p + 12 || &head[p..p + 8] != b"OpusHead" {
        return Err(bad("Ogg without an OpusHead"));
    }
    let pre_skip = u16::from_le_bytes([head[p + 10], head[p + 11]]) as u64;
    // The last page header is within the last 64 KiB (a page is at most ~64 KiB).
    let tail_start = len.saturating_sub(65_307 + 27);
    r.seek(SeekFrom::Start(tail_start))?;
    let tail = read_n(r, (len - tail_start) as usize)?;
    let mut granule = None;
    let mut i = tail.len().saturating_sub(27);
    loop {
        if &tail[i..i + 4] == b"OggS" && tail[i + 4] == 0 {
            let g = i64::from_le_bytes(tail[i + 6..i + 14].try_into().expect("8 bytes"));
            if g >= 0 {
                granule = Some(g as u64);
                break;
            }
        }
        if i == 0 {
            break;
        }
        i -= 1;
    }
    let g = granule.ok_or_else(|| bad("Ogg without a final page"))?;
    Ok(AvInfo {
        duration_ms: Some(g.saturating_sub(pre_skip) * 1000 / 48_000),
        ..AvInfo::default()
    })
}

// ---- MP3 ---------------------------------------------------------------------------------

/// (frame bytes, samples, sample rate) of the MPEG audio frame header `h`.
fn mp3_frame(h: [u8; 4]) -> Option<(u64, u64, u64)> {
    if h[0] != 0xFF || h[1] & 0xE0 != 0xE0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 3 = MPEG1, 2 = MPEG2, 0 = MPEG2.5
    let layer = (h[1] >> 1) & 3; // 1 = Layer III
    if version == 1 || layer != 1 {
        return None;
    }
    let bi = (h[2] >> 4) as usize;
    let si = ((h[2] >> 2) & 3) as usize;
    let pad = ((h[2] >> 1) & 1) as u64;
    if bi == 0 || bi == 15 || si == 3 {
        return None;
    }
    const V1: [u64; 15] = [
        0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320,
    ];
    const V2: [u64; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    const RATES: [u64; 3] = [44_100, 48_000, 32_000];
    let (kbps, rate, samples) = match version {
        3 => (V1[bi], RATES[si], 1152),
        2 => (V2[bi], RATES[si] / 2, 576),
        _ => (V2[bi], RATES[si] / 4, 576),
    };
    let bytes = samples / 8 * kbps * 1000 / rate + pad;
    Some((bytes, samples, rate))
}

/// MP3: every frame walked (exact for CBR and VBR), after skipping an ID3v2 tag.
fn mp3<R: Read + Seek>(r: &mut R) -> io::Result<AvInfo> {
    let len = len_of(r)?;
    let mut r = io::BufReader::new(r);
    let mut pos = 0u64;
    let id3 = read_n(&mut r, 10.min(len as usize))?;
    if id3.len() == 10 && &id3[0..3] == b"ID3" {
        let size = id3[6..10]
            .iter()
            .fold(0u64, |a, b| (a << 7) | (*b & 0x7F) as u64);
        pos = 10 + size + if id3[5] & 0x10 != 0 { 10 } else { 0 };
    }
    let (mut samples, mut rate, mut frames) = (0u64, 0u64, 0u64);
    while pos + 4 <= len {
        r.seek(SeekFrom::Start(pos))?;
        let h: [u8; 4] = read_n(&mut r, 4)?.try_into().expect("4 bytes");
        let Some((bytes, s, sr)) = mp3_frame(h) else {
            if frames == 0 {
                return Err(bad("no MP3 frame after the ID3 tag"));
            }
            break; // trailing tags (ID3v1, APE)
        };
        if pos + bytes > len {
            break; // a truncated last frame
        }
        samples += s;
        rate = sr;
        frames += 1;
        pos += bytes;
    }
    if frames == 0 {
        return Err(bad("no MP3 frames"));
    }
    Ok(AvInfo {
        duration_ms: Some(samples * 1000 / rate),
        ..AvInfo::default()
    })
}

// ---- AAC (ADTS) --------------------------------------------------------------------------

fn adts<R: Read + Seek>(r: &mut R) -> io::Result<AvInfo> {
    const RATES: [u64; 13] = [
        96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025,
        8_000, 7_350,
    ];
    let len = len_of(r)?;
    let mut r = io::BufReader::new(r);
    let (mut pos, mut samples, mut rate, mut frames) = (0u64, 0u64, 0u64, 0u64);
    while pos + 7 <= len {
        r.seek(SeekFrom::Start(pos))?;
        let h = read_n(&mut r, 7)?;
        if h[0] != 0xFF || h[1] & 0xF6 != 0xF0 {
            break;
        }
        let si = ((h[2] >> 2) & 0xF) as usize;
        let flen = (((h[3] & 3) as u64) << 11) | ((h[4] as u64) << 3) | (h[5] as u64 >> 5);
        let blocks = (h[6] & 3) as u64 + 1;
        if si >= RATES.len() || flen < 7 {
            return Err(bad("bad ADTS frame header"));
        }
        if pos + flen > len {
            break;
        }
        rate = RATES[si];
        samples += 1024 * blocks;
        frames += 1;
        pos += flen;
    }
    if frames == 0 {
        return Err(bad("no ADTS frames"));
    }
    Ok(AvInfo {
        duration_ms: Some(samples * 1000 / rate),
        ..AvInfo::default()
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixtures;
    use super::*;
    use std::io::Cursor;

    fn probe_bytes(c: Container, b: &[u8]) -> io::Result<AvInfo> {
        probe(c, &mut Cursor::new(b))
    }

    #[test]
    fn mp4_duration_and_video_size() {
        let v = fixtures::mp4(true, 2500, 640, 360);
        let i = probe_bytes(Container::Mp4, &v).unwrap();
        assert_eq!(
            i,
            AvInfo {
                duration_ms: Some(2500),
                width: Some(640),
                height: Some(360)
            }
        );
        let a = fixtures::mp4(false, 4200, 0, 0);
        let i = probe_bytes(Container::Mp4, &a).unwrap();
        assert_eq!(i.duration_ms, Some(4200));
        assert_eq!(i.width, None);
        assert!(probe_bytes(Container::Mp4, &v[..v.len() - 10]).is_err());
    }

    #[test]
    fn fragmented_mp4_duration_from_its_fragments() {
        // As MediaRecorder writes MP4: mvhd duration 0, samples in moof/trun.
        let f = fixtures::fmp4(2000);
        let i = probe_bytes(Container::Mp4, &f).unwrap();
        assert_eq!(i.duration_ms, Some(2000));
        assert_eq!(i.width, None);
    }

    #[test]
    fn webm_duration_from_info_or_from_the_last_block() {
        let v = fixtures::webm(Some(3000.0), Some((320, 240)), 3000);
        let i = probe_bytes(Container::WebM, &v).unwrap();
        assert_eq!(i.duration_ms, Some(3000));
        assert_eq!((i.width, i.height), (Some(320), Some(240)));
        // A MediaRecorder voice note: no Duration, unknown sizes; the last block counts.
        let a = fixtures::webm(None, None, 1940);
        let i = probe_bytes(Container::WebM, &a).unwrap();
        assert_eq!(i.duration_ms, Some(1940));
        assert_eq!(i.width, None);
    }

    #[test]
    fn ogg_opus_duration_from_the_last_granule() {
        let o = fixtures::ogg_opus(1500);
        assert_eq!(
            probe_bytes(Container::OggOpus, &o).unwrap().duration_ms,
            Some(1500)
        );
    }

    #[test]
    fn mp3_and_adts_durations_count_frames() {
        let m = fixtures::mp3(100);
        // 100 frames × 1152 samples at 44.1 kHz = 2.612 s
        assert_eq!(
            probe_bytes(Container::Mp3, &m).unwrap().duration_ms,
            Some(2612)
        );
        let a = fixtures::adts(47);
        // 47 frames × 1024 samples at 48 kHz = 1.002 s
        assert_eq!(
            probe_bytes(Container::Aac, &a).unwrap().duration_ms,
            Some(1002)
        );
        assert!(probe_bytes(Container::Mp3, b"ID3\x04\0\0\0\0\0\0garbage").is_err());
    }
}
