//! Thumbnails: the size buckets, and the decoding/resizing/encoding itself (blocking; run it
//! on the blocking pool). Only PNG, JPEG, GIF (first frame) and WebP are decoded, whatever the
//! uploaded content type says; the image's dimensions are read from its header and checked
//! against the pixel limit before anything is decoded, and the decoder's allocations are
//! capped too.

use std::{io::BufReader, path::Path};

use image::{imageops::FilterType, DynamicImage, ImageFormat, ImageReader};

use crate::error::{Error, Result};

/// The sizes thumbnails are made in: `(width, height, crop)`.
pub const BUCKETS: &[(u32, u32, bool)] = &[
    (32, 32, true),
    (96, 96, true),
    (320, 240, false),
    (640, 480, false),
    (800, 600, false),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    pub width: u32,
    pub height: u32,
    pub crop: bool,
}

/// The bucket that serves a request: the smallest of the requested method at least as large
/// as asked, else the largest of that method. A method without buckets of its own large
/// enough (crop above 96×96) falls back to the same dimensions with the requested method, so
/// `crop` always crops: large crops use the requested size rounded up to the next scale
/// bucket.
pub fn bucket(width: u32, height: u32, crop: bool) -> Spec {
    let same: Vec<_> = BUCKETS.iter().filter(|b| b.2 == crop).collect();
    if let Some(b) = same.iter().find(|b| b.0 >= width && b.1 >= height) {
        return Spec {
            width: b.0,
            height: b.1,
            crop,
        };
    }
    if crop {
        // Larger crops: the smallest scale bucket covering the request, cropped.
        let b = BUCKETS
            .iter()
            .filter(|b| !b.2)
            .find(|b| b.0 >= width && b.1 >= height)
            .unwrap_or(&BUCKETS[BUCKETS.len() - 1]);
        return Spec {
            width: b.0,
            height: b.1,
            crop: true,
        };
    }
    let b = same[same.len() - 1];
    Spec {
        width: b.0,
        height: b.1,
        crop,
    }
}

pub struct Made {
    pub bytes: Vec<u8>,
    pub content_type: &'static str,
    pub width: u32,
    pub height: u32,
}

fn cannot(reason: impl std::fmt::Display) -> Error {
    Error::new(
        http::StatusCode::BAD_REQUEST,
        "M_UNKNOWN",
        format!("Cannot make a thumbnail of this media: {reason}"),
    )
}

/// Reads the image at `path` and makes the thumbnail `spec`, refusing images over
/// `max_pixels`.
pub fn make(path: &Path, spec: Spec, max_pixels: u64) -> Result<Made> {
    let open = || {
        std::fs::File::open(path).map(BufReader::new).map_err(|e| {
            log::error!("cannot open media file {}: {e}", path.display());
            Error::unknown("Cannot read the media")
        })
    };
    let format = ImageReader::new(open()?)
        .with_guessed_format()
        .map_err(cannot)?
        .format()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Gif | ImageFormat::WebP
            )
        })
        .ok_or_else(|| cannot("not a PNG, JPEG, GIF or WebP image"))?;
    let (w, h) = ImageReader::with_format(open()?, format)
        .into_dimensions()
        .map_err(cannot)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(Error::too_large(format!(
            "The image is {w}×{h} = {pixels} pixels; thumbnails are made of images up to {max_pixels} pixels"
        )));
    }
    let mut reader = ImageReader::with_format(open()?, format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    // Room for the decoded image at up to 8 bytes per pixel plus the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let image = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => Error::too_large(format!(
            "The image needs more memory to decode than allowed for {max_pixels} pixels"
        )),
        e => cannot(e),
    })?;
    let thumb = resize(image, spec);
    let (width, height) = (thumb.width(), thumb.height());
    let mut bytes = Vec::new();
    let content_type = if format == ImageFormat::Jpeg {
        let rgb = thumb.into_rgb8();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 85)
            .encode_image(&rgb)
            .map_err(cannot)?;
        "image/jpeg"
    } else {
        let img = if thumb.color().has_alpha() {
            DynamicImage::ImageRgba8(thumb.into_rgba8())
        } else {
            DynamicImage::ImageRgb8(thumb.into_rgb8())
        };
        img.write_to(&mut std::io::Cursor::new(&mut bytes), ImageFormat::Png)
            .map_err(cannot)?;
        "image/png"
    };
    Ok(Made {
        bytes,
        content_type,
        width,
        height,
    })
}

/// Scale: fit inside the bucket keeping the aspect ratio. Crop: fill the bucket and cut the
/// overflow, centred. Never enlarges: an image smaller than the bucket keeps its size (cropped
/// to the bucket's aspect ratio for `crop`).
fn resize(image: DynamicImage, spec: Spec) -> DynamicImage {
    // A crop keeps only the centred region with the bucket's aspect ratio: cut it out first, so
    // the filtered resize never works on the discarded part (a 801×49937 image cropped to
    // 800×600 would otherwise need a float buffer of the whole image).
    let image = if spec.crop {
        centre_region(image, spec)
    } else {
        image
    };
    let image = presample(image, spec);
    let (w, h) = (image.width(), image.height());
    if !spec.crop {
        if w <= spec.width && h <= spec.height {
            return image;
        }
        return image.resize(spec.width, spec.height, FilterType::Triangle);
    }
    if w >= spec.width && h >= spec.height {
        return image.resize_to_fill(spec.width, spec.height, FilterType::Triangle);
    }
    // Smaller than the bucket: already the centred region with its aspect ratio; never
    // enlarged.
    image
}

/// The largest centred region of `image` with the bucket's aspect ratio.
fn centre_region(image: DynamicImage, spec: Spec) -> DynamicImage {
    let (w, h) = (image.width(), image.height());
    let (bw, bh) = (u64::from(spec.width.max(1)), u64::from(spec.height.max(1)));
    let (cw, ch) = if u64::from(w) * bh > u64::from(h) * bw {
        (((u64::from(h) * bw) / bh).max(1) as u32, h)
    } else {
        (w, ((u64::from(w) * bh) / bw).max(1) as u32)
    };
    if (cw, ch) == (w, h) {
        return image;
    }
    image.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
}

/// A large reduction first samples the image down (integer box filter, no intermediate
/// float buffer) to twice the final size, so the filtered resize after it works on a small
/// image: less memory and time, the same look.
fn presample(image: DynamicImage, spec: Spec) -> DynamicImage {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    let (sx, sy) = (f64::from(spec.width) / w, f64::from(spec.height) / h);
    // The final scale: fill the bucket for crop, fit in it for scale.
    let scale = if spec.crop { sx.max(sy) } else { sx.min(sy) };
    if scale * 4.0 > 1.0 {
        return image;
    }
    let (pw, ph) = (
        (w * scale * 2.0).ceil() as u32,
        (h * scale * 2.0).ceil() as u32,
    );
    image.thumbnail_exact(pw.max(1), ph.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(
            bucket(10, 10, true),
            Spec {
                width: 32,
                height: 32,
                crop: true
            }
        );
        assert_eq!(
            bucket(50, 40, true),
            Spec {
                width: 96,
                height: 96,
                crop: true
            }
        );
        assert_eq!(
            bucket(200, 100, true),
            Spec {
                width: 320,
                height: 240,
                crop: true
            }
        );
        assert_eq!(
            bucket(10, 10, false),
            Spec {
                width: 320,
                height: 240,
                crop: false
            }
        );
        assert_eq!(
            bucket(500, 400, false),
            Spec {
                width: 640,
                height: 480,
                crop: false
            }
        );
        assert_eq!(
            bucket(5000, 5000, false),
            Spec {
                width: 800,
                height: 600,
                crop: false
            }
        );
    }

    #[test]
    fn resize_never_enlarges() {
        let img = DynamicImage::new_rgb8(100, 50);
        let scaled = resize(
            img.clone(),
            Spec {
                width: 320,
                height: 240,
                crop: false,
            },
        );
        assert_eq!((scaled.width(), scaled.height()), (100, 50));
        let cropped = resize(
            img,
            Spec {
                width: 96,
                height: 96,
                crop: true,
            },
        );
        assert_eq!((cropped.width(), cropped.height()), (50, 50));
    }
}
