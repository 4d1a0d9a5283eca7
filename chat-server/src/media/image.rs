//! Images: decoded under a pixel limit (decompression bombs are refused before any pixel is
//! allocated), turned upright by their EXIF orientation, and re-encoded so that what is served
//! carries no metadata (EXIF, GPS, XMP, comments); a thumbnail is made from the same pixels.
//! CPU-bound: call it on a blocking thread. No I/O besides the given bytes.
//!
//! Per format: JPEG → re-encoded JPEG (quality 85); PNG → re-encoded PNG (only IHDR/PLTE/tRNS/
//! IDAT/IEND survive); GIF → every frame re-encoded (animation kept, extensions dropped);
//! WebP → decoded in full to validate it, then its `EXIF` and `XMP ` chunks are removed at
//! the container level (re-encoding lossy WebP losslessly would multiply its size).

use super::sniff::Container;
use crate::error::Error;
use image::codecs::gif::{GifDecoder, GifEncoder, Repeat};
use image::codecs::jpeg::JpegEncoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};
use std::io::Cursor;

/// Limits of image processing.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Most pixels (width × height) of an image; all frames of an animation together get 4×.
    pub max_pixels: u64,
    /// Longest side of the thumbnail.
    pub thumbnail_side: u32,
}

/// A processed image: what is served, and its thumbnail.
#[derive(Debug)]
pub struct ProcessedImage {
    pub width: u32,
    pub height: u32,
    pub main: Vec<u8>,
    pub thumbnail: Vec<u8>,
    pub thumbnail_type: &'static str,
}

fn format_of(c: Container) -> Option<ImageFormat> {
    Some(match c {
        Container::Jpeg => ImageFormat::Jpeg,
        Container::Png => ImageFormat::Png,
        Container::Gif => ImageFormat::Gif,
        Container::WebP => ImageFormat::WebP,
        _ => return None,
    })
}

fn decode_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::TooLarge(format!(
            "the image needs more memory to decode than allowed ({l}); it may be a \
             decompression bomb"
        )),
        other => Error::UnsupportedMediaType(format!(
            "the image is corrupt or truncated and cannot be decoded: {other}"
        )),
    }
}

fn too_many_pixels(w: u32, h: u32, max: u64) -> Error {
    Error::TooLarge(format!(
        "the image is {w}×{h} = {} pixels; the limit is {max} pixels (a decompression bomb?)",
        w as u64 * h as u64
    ))
}

fn limits(l: &ImageLimits) -> Limits {
    let mut lim = Limits::default();
    // 8 bytes per pixel covers RGBA16; the decoders' own buffers come on top.
    lim.max_alloc = Some(l.max_pixels.saturating_mul(8) + 64 * 1024 * 1024);
    lim
}

/// Decode, check and re-encode an image whose container was sniffed as `c`.
pub fn process(bytes: &[u8], c: Container, l: &ImageLimits) -> Result<ProcessedImage, Error> {
    let format = format_of(c).ok_or_else(|| Error::internal("not an image container"))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits(l));
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(Error::UnsupportedMediaType(
            "the image has no pixels".into(),
        ));
    }
    if w as u64 * h as u64 > l.max_pixels {
        return Err(too_many_pixels(w, h, l.max_pixels));
    }
    let orientation = decoder.orientation().map_err(decode_error)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let main = match c {
        Container::Jpeg => jpeg(&img)?,
        Container::Png => {
            let mut out = Cursor::new(Vec::new());
            img.write_to(&mut out, ImageFormat::Png)
                .map_err(Error::internal)?;
            out.into_inner()
        }
        Container::Gif => gif(bytes, w, h, l)?,
        Container::WebP => strip_webp(bytes)?,
        _ => unreachable!("checked by format_of"),
    };
    let thumb = img.thumbnail(l.thumbnail_side, l.thumbnail_side);
    let (thumbnail, thumbnail_type) = if thumb.color().has_alpha() {
        let mut out = Cursor::new(Vec::new());
        thumb
            .write_to(&mut out, ImageFormat::Png)
            .map_err(Error::internal)?;
        (out.into_inner(), "image/png")
    } else {
        (jpeg(&thumb)?, "image/jpeg")
    };
    Ok(ProcessedImage {
        width,
        height,
        main,
        thumbnail,
        thumbnail_type,
    })
}

fn jpeg(img: &DynamicImage) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let rgb = DynamicImage::ImageRgb8(img.to_rgb8());
    JpegEncoder::new_with_quality(&mut out, 85)
        .encode_image(&rgb)
        .map_err(Error::internal)?;
    Ok(out)
}

/// Every frame of a GIF, re-encoded; all frames together stay under 4 × the pixel limit.
fn gif(bytes: &[u8], w: u32, h: u32, l: &ImageLimits) -> Result<Vec<u8>, Error> {
    let mut decoder = GifDecoder::new(Cursor::new(bytes)).map_err(decode_error)?;
    decoder.set_limits(limits(l)).map_err(decode_error)?;
    let budget = l.max_pixels.saturating_mul(4);
    let per_frame = w as u64 * h as u64;
    let mut frames = Vec::new();
    for f in decoder.into_frames() {
        let f = f.map_err(decode_error)?;
        if per_frame * (frames.len() as u64 + 1) > budget {
            return Err(Error::TooLarge(format!(
                "the animation has more than {} frames of {w}×{h}; the limit is {budget} \
                 pixels over all frames",
                frames.len()
            )));
        }
        frames.push(f);
    }
    let mut out = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut out, 10);
        enc.set_repeat(Repeat::Infinite).map_err(Error::internal)?;
        enc.encode_frames(frames).map_err(Error::internal)?;
    }
    Ok(out)
}

/// A WebP file without its `EXIF` and `XMP ` chunks (and their flags in `VP8X`).
pub fn strip_webp(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let bad = || Error::UnsupportedMediaType("the WebP container is corrupt".into());
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WEBP" {
        return Err(bad());
    }
    let mut out = b"RIFF\0\0\0\0WEBP".to_vec();
    let mut p = 12;
    while p + 8 <= bytes.len() {
        let id = &bytes[p..p + 4];
        let size = u32::from_le_bytes(bytes[p + 4..p + 8].try_into().expect("4 bytes")) as usize;
        let end = p + 8 + size + (size & 1);
        if p + 8 + size > bytes.len() {
            return Err(bad());
        }
        match id {
            b"EXIF" | b"XMP " => {}
            b"VP8X" => {
                let start = out.len();
                out.extend(&bytes[p..end.min(bytes.len())]);
                if size > 0 {
                    out[start + 8] &= !(0x08 | 0x04);
                }
            }
            _ => out.extend(&bytes[p..end.min(bytes.len())]),
        }
        p = end;
    }
    let riff = (out.len() - 8) as u32;
    out[4..8].copy_from_slice(&riff.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Rgb, Rgba};

    const L: ImageLimits = ImageLimits {
        max_pixels: 4_000_000,
        thumbnail_side: 64,
    };

    fn encode(img: DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    }

    fn photo(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(ImageBuffer::from_fn(w, h, |x, y| {
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
        }))
    }

    /// A JPEG with an APP1 EXIF segment (carrying a GPS-looking marker) after SOI.
    fn jpeg_with_exif(w: u32, h: u32) -> Vec<u8> {
        let plain = encode(photo(w, h), ImageFormat::Jpeg);
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08GPSLatitude=52.37".to_vec();
        exif.resize(64, 0);
        let mut out = plain[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(((exif.len() + 2) as u16).to_be_bytes());
        out.extend(exif);
        out.extend(&plain[2..]);
        out
    }

    #[test]
    fn jpeg_exif_is_gone_and_a_thumbnail_is_made() {
        let src = jpeg_with_exif(200, 100);
        assert!(src.windows(4).any(|w| w == b"Exif"));
        let p = process(&src, Container::Jpeg, &L).unwrap();
        assert_eq!((p.width, p.height), (200, 100));
        assert!(!p.main.windows(4).any(|w| w == b"Exif"));
        assert!(!p.main.windows(11).any(|w| w == b"GPSLatitude"));
        assert_eq!(&p.main[..3], &[0xFF, 0xD8, 0xFF]);
        let t = image::load_from_memory(&p.thumbnail).unwrap();
        assert_eq!((t.width(), t.height()), (64, 32));
        assert_eq!(p.thumbnail_type, "image/jpeg");
    }

    #[test]
    fn png_with_alpha_keeps_a_png_thumbnail() {
        let img = DynamicImage::ImageRgba8(ImageBuffer::from_pixel(10, 20, Rgba([1, 2, 3, 4])));
        let p = process(&encode(img, ImageFormat::Png), Container::Png, &L).unwrap();
        assert_eq!((p.width, p.height), (10, 20));
        assert_eq!(p.thumbnail_type, "image/png");
    }

    #[test]
    fn bombs_truncated_and_corrupt_images_are_refused() {
        // A 3000×3000 PNG compresses to a few KiB but holds 9 M pixels (limit 4 M).
        let bomb = encode(
            DynamicImage::ImageLuma8(ImageBuffer::new(3000, 3000)),
            ImageFormat::Png,
        );
        assert!(bomb.len() < 64 * 1024);
        let e = process(&bomb, Container::Png, &L).unwrap_err();
        assert_eq!(e.code(), "too_large");
        assert!(e.to_string().contains("3000×3000"), "{e}");
        let good = encode(photo(50, 50), ImageFormat::Png);
        let e = process(&good[..good.len() / 2], Container::Png, &L).unwrap_err();
        assert_eq!(e.code(), "unsupported_media_type");
        let mut corrupt = encode(photo(50, 50), ImageFormat::Jpeg);
        for b in corrupt.iter_mut().skip(200).take(400) {
            *b = 0x00;
        }
        corrupt.truncate(300);
        assert!(process(&corrupt, Container::Jpeg, &L).is_err());
    }

    #[test]
    fn webp_metadata_chunks_are_removed() {
        let webp = encode(photo(16, 16), ImageFormat::WebP);
        // Insert an EXIF chunk and mark it in a VP8X header.
        let mut with = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0\x08\0\0\0\x0f\0\0\x0f\0\0".to_vec();
        with.extend(&webp[12..]);
        with.extend(b"EXIF\x06\0\0\0GPS!!!");
        let n = (with.len() - 8) as u32;
        with[4..8].copy_from_slice(&n.to_le_bytes());
        let p = process(&with, Container::WebP, &L).unwrap();
        assert!(!p.main.windows(4).any(|w| w == b"EXIF"));
        assert_eq!(p.main[20] & 0x08, 0, "EXIF flag cleared");
        assert_eq!((p.width, p.height), (16, 16));
        image::load_from_memory_with_format(&p.main, ImageFormat::WebP).unwrap();
    }

    #[test]
    fn gif_animation_is_kept() {
        use image::{Delay, Frame};
        let mut src = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut src);
            let frames = (0..3).map(|i| {
                Frame::from_parts(
                    ImageBuffer::from_pixel(8, 8, Rgba([i * 80, 0, 0, 255])),
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                )
            });
            enc.encode_frames(frames).unwrap();
        }
        let p = process(&src, Container::Gif, &L).unwrap();
        let d = GifDecoder::new(Cursor::new(&p.main)).unwrap();
        assert_eq!(d.into_frames().count(), 3);
    }
}
