//! Minimal, valid audio/video containers built in code, for `tests/media.rs` and for the unit
//! tests of `src/media/container.rs` (which include this file as `media::fixtures`, under
//! `#[cfg(test)]`). Each has real headers and frames with silent/empty payloads: enough for
//! sniffing, duration and dimensions, not for playback.

pub fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
    b.extend(kind);
    b.extend(payload);
    b
}

/// MP4 (`video`: one `vide` track of `w`×`h`) or M4A (one `soun` track), `ms` long, with the
/// `moov` box after `mdat` as many encoders write it.
pub fn mp4(video: bool, ms: u32, w: u32, h: u32) -> Vec<u8> {
    let mut out = if video {
        boxed(b"ftyp", b"isom\0\0\x02\0isommp41")
    } else {
        boxed(b"ftyp", b"M4A \0\0\x02\0M4A isom")
    };
    out.extend(boxed(b"mdat", &[0u8; 64]));
    let mut mvhd = vec![0u8; 100];
    mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
    mvhd[16..20].copy_from_slice(&ms.to_be_bytes());
    let mut tkhd = vec![0u8; 84];
    tkhd[76..80].copy_from_slice(&(w << 16).to_be_bytes());
    tkhd[80..84].copy_from_slice(&(h << 16).to_be_bytes());
    let mut hdlr = vec![0u8; 25];
    hdlr[8..12].copy_from_slice(if video { b"vide" } else { b"soun" });
    let mdia = boxed(b"mdia", &boxed(b"hdlr", &hdlr));
    let mut trak = boxed(b"tkhd", &tkhd);
    trak.extend(mdia);
    let mut moov = boxed(b"mvhd", &mvhd);
    moov.extend(boxed(b"trak", &trak));
    out.extend(boxed(b"moov", &moov));
    out
}

/// A fragmented M4A as MediaRecorder writes it: `mvhd` duration 0, a `trex`, and one
/// `moof`+`mdat` per 10 samples of 20 ms at 48 kHz (per-sample durations in `trun`), `ms` long.
pub fn fmp4(ms: u32) -> Vec<u8> {
    let mut out = boxed(b"ftyp", b"iso5\0\0\x02\0iso5iso6mp41");
    let mut mvhd = vec![0u8; 100];
    mvhd[12..16].copy_from_slice(&1000u32.to_be_bytes());
    let mut tkhd = vec![0u8; 84];
    tkhd[12..16].copy_from_slice(&1u32.to_be_bytes());
    let mut mdhd = vec![0u8; 24];
    mdhd[12..16].copy_from_slice(&48_000u32.to_be_bytes());
    let mut hdlr = vec![0u8; 25];
    hdlr[8..12].copy_from_slice(b"soun");
    let mdia = [boxed(b"mdhd", &mdhd), boxed(b"hdlr", &hdlr)].concat();
    let trak = [boxed(b"tkhd", &tkhd), boxed(b"mdia", &mdia)].concat();
    let mut trex = vec![0u8; 24];
    trex[4..8].copy_from_slice(&1u32.to_be_bytes());
    trex[12..16].copy_from_slice(&960u32.to_be_bytes());
    let moov = [
        boxed(b"mvhd", &mvhd),
        boxed(b"trak", &trak),
        boxed(b"mvex", &boxed(b"trex", &trex)),
    ]
    .concat();
    out.extend(boxed(b"moov", &moov));
    let total = ms as u64 * 48;
    let mut t = 0u64;
    let mut seq = 1u32;
    while t < total {
        let mut tfhd = vec![0, 0x02, 0, 0];
        tfhd.extend(1u32.to_be_bytes());
        let mut tfdt = vec![1, 0, 0, 0];
        tfdt.extend(t.to_be_bytes());
        let mut durations = Vec::new();
        while durations.len() < 10 && t < total {
            let d = (total - t).min(960);
            durations.push(d as u32);
            t += d;
        }
        let mut trun = vec![0, 0, 0x03, 0x01]; // data offset, duration + size per sample
        trun.extend((durations.len() as u32).to_be_bytes());
        trun.extend(0u32.to_be_bytes());
        for d in &durations {
            trun.extend(d.to_be_bytes());
            trun.extend(3u32.to_be_bytes());
        }
        let traf = [
            boxed(b"tfhd", &tfhd),
            boxed(b"tfdt", &tfdt),
            boxed(b"trun", &trun),
        ]
        .concat();
        let mut mfhd = vec![0u8; 4];
        mfhd.extend(seq.to_be_bytes());
        out.extend(boxed(
            b"moof",
            &[boxed(b"mfhd", &mfhd), boxed(b"traf", &traf)].concat(),
        ));
        out.extend(boxed(b"mdat", &vec![0u8; 3 * durations.len()]));
        seq += 1;
    }
    out
}

fn ebml(id: u32, payload: &[u8]) -> Vec<u8> {
    let mut b: Vec<u8> = id
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|x| *x == 0)
        .collect();
    if payload.len() < 127 {
        b.push(0x80 | payload.len() as u8);
    } else {
        b.push(0x01);
        b.extend(&(payload.len() as u64).to_be_bytes()[1..]);
    }
    b.extend(payload);
    b
}

fn ebml_unknown(id: u32) -> Vec<u8> {
    let mut b: Vec<u8> = id
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|x| *x == 0)
        .collect();
    b.extend([0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    b
}

/// WebM with 1 ms timecodes and a block every 20 ms up to `last_ms`. `duration_ms`: written in
/// `Info` with known sizes (a muxed file); `None`: no Duration and unknown-size Segment and
/// Clusters, as MediaRecorder writes. `video`: a video track of that size, else audio only.
pub fn webm(duration_ms: Option<f64>, video: Option<(u32, u32)>, last_ms: u32) -> Vec<u8> {
    let mut out = ebml(
        0x1A45DFA3,
        &[ebml(0x4286, &[1]), ebml(0x4282, b"webm")].concat(),
    );
    let mut info = ebml(0x2AD7B1, &[0x0F, 0x42, 0x40]);
    if let Some(d) = duration_ms {
        info.extend(ebml(0x4489, &d.to_bits().to_be_bytes()));
    }
    let mut entry = [
        ebml(0xD7, &[1]),
        ebml(0x83, &[if video.is_some() { 1 } else { 2 }]),
    ]
    .concat();
    if let Some((w, h)) = video {
        entry.extend(ebml(
            0xE0,
            &[
                ebml(0xB0, &(w as u16).to_be_bytes()),
                ebml(0xBA, &(h as u16).to_be_bytes()),
            ]
            .concat(),
        ));
    }
    let mut body = [
        ebml(0x1549A966, &info),
        ebml(0x1654AE6B, &ebml(0xAE, &entry)),
    ]
    .concat();
    let mut t = 0;
    while t <= last_ms {
        let cluster_tc = t / 1000 * 1000;
        let mut c = ebml(0xE7, &(cluster_tc as u16).to_be_bytes());
        while t <= last_ms && t / 1000 * 1000 == cluster_tc {
            let rel = (t - cluster_tc) as i16;
            let mut blk = vec![0x81];
            blk.extend(rel.to_be_bytes());
            blk.push(0x80);
            blk.extend([0u8; 8]);
            c.extend(ebml(0xA3, &blk));
            t += 20;
        }
        if duration_ms.is_some() {
            body.extend(ebml(0x1F43B675, &c));
        } else {
            body.extend(ebml_unknown(0x1F43B675));
            body.extend(c);
        }
    }
    if duration_ms.is_some() {
        out.extend(ebml(0x18538067, &body));
    } else {
        out.extend(ebml_unknown(0x18538067));
        out.extend(body);
    }
    out
}

fn ogg_page(kind: u8, granule: i64, seq: u32, packet: &[u8]) -> Vec<u8> {
    let mut p = b"OggS\0".to_vec();
    p.push(kind);
    p.extend(granule.to_le_bytes());
    p.extend(0x7E41u32.to_le_bytes());
    p.extend(seq.to_le_bytes());
    p.extend([0u8; 4]); // CRC (not checked by the reader)
    let mut segs = vec![255u8; packet.len() / 255];
    segs.push((packet.len() % 255) as u8);
    p.push(segs.len() as u8);
    p.extend(segs);
    p.extend(packet);
    p
}

/// Ogg/Opus, `ms` long (48 kHz granules, pre-skip 312), one page per 20 ms packet.
pub fn ogg_opus(ms: u32) -> Vec<u8> {
    let pre_skip: u16 = 312;
    let mut head = b"OpusHead\x01\x01".to_vec();
    head.extend(pre_skip.to_le_bytes());
    head.extend(48_000u32.to_le_bytes());
    head.extend([0, 0, 0]);
    let mut out = ogg_page(2, 0, 0, &head);
    out.extend(ogg_page(0, 0, 1, b"OpusTags\x04\0\0\0tern\0\0\0\0"));
    let total = pre_skip as i64 + ms as i64 * 48;
    let mut g = pre_skip as i64;
    let mut seq = 2;
    while g < total {
        g = (g + 960).min(total);
        let kind = if g == total { 4 } else { 0 };
        out.extend(ogg_page(kind, g, seq, &[0xF8, 0xFF, 0xFE]));
        seq += 1;
    }
    out
}

/// MP3: an ID3v2 tag, then `frames` MPEG-1 Layer III frames at 128 kbit/s, 44.1 kHz.
pub fn mp3(frames: usize) -> Vec<u8> {
    let mut out = b"ID3\x04\0\0\0\0\0\x0a".to_vec();
    out.extend([0u8; 10]);
    for _ in 0..frames {
        let mut f = vec![0xFF, 0xFB, 0x90, 0x64];
        f.resize(417, 0);
        out.extend(f);
    }
    out
}

/// Raw AAC: `frames` ADTS frames (AAC-LC, 48 kHz, mono), 1024 samples each.
pub fn adts(frames: usize) -> Vec<u8> {
    let flen: u16 = 7 + 10;
    let mut out = Vec::new();
    for _ in 0..frames {
        out.extend([
            0xFF,
            0xF1,
            0x4C,
            0x40 | ((flen >> 11) & 3) as u8,
            ((flen >> 3) & 0xFF) as u8,
            (((flen & 7) << 5) as u8) | 0x1F,
            0xFC,
        ]);
        out.extend([0u8; 10]);
    }
    out
}
