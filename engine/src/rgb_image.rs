//! A plain float RGB image: what renderers return to the host, what metrics compare and what
//! gets written as PNG.

use std::path::Path;

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// Row-major RGB, channels interleaved, values nominally in [0, 1].
#[derive(Debug, Clone, PartialEq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `3 * width * height` floats.
    pub data: Vec<f32>,
}

/// Writing an image failed.
#[derive(Debug, thiserror::Error)]
#[error("could not write image {path}: {source}")]
pub struct ImageWriteError {
    /// The file.
    pub path: String,
    /// Why.
    #[source]
    pub source: image::ImageError,
}

/// Reading an image failed.
#[derive(Debug, thiserror::Error)]
#[error("could not read image {path}: {source}")]
pub struct ImageReadError {
    /// The file.
    pub path: String,
    /// Why.
    #[source]
    pub source: image::ImageError,
}

impl RgbImage {
    /// An image filled with one colour.
    pub fn filled(width: u32, height: u32, color: [f32; 3]) -> Self {
        let n = width as usize * height as usize;
        Self {
            width,
            height,
            data: color.iter().copied().cycle().take(3 * n).collect(),
        }
    }

    /// The `width` x `height` window whose top-left pixel is `(x, y)`; `None` where it does
    /// not fit inside the image.
    pub fn crop(&self, x: u32, y: u32, width: u32, height: u32) -> Option<Self> {
        if x.checked_add(width)? > self.width || y.checked_add(height)? > self.height {
            return None;
        }
        let mut data = Vec::with_capacity(3 * width as usize * height as usize);
        for row in y..y + height {
            let start = 3 * (row as usize * self.width as usize + x as usize);
            data.extend_from_slice(&self.data[start..start + 3 * width as usize]);
        }
        Some(Self {
            width,
            height,
            data,
        })
    }

    /// Pixel at `(x, y)`.
    pub fn pixel(&self, x: u32, y: u32) -> [f32; 3] {
        let i = 3 * (y as usize * self.width as usize + x as usize);
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// Images from a `[views, 3, height, width]` tensor.
    pub fn from_tensor<B: Backend>(images: Tensor<B, 4>) -> Vec<Self> {
        let [views, _, height, width] = images.dims();
        let data: Vec<f32> = images
            .permute([0, 2, 3, 1])
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("float tensor data");
        data.chunks(3 * height * width)
            .take(views)
            .map(|d| Self {
                width: width as u32,
                height: height as u32,
                data: d.to_vec(),
            })
            .collect()
    }

    /// Several images (same size) as a `[views, 3, height, width]` tensor.
    pub fn to_tensor<B: Backend>(images: &[Self], device: &B::Device) -> Tensor<B, 4> {
        let (w, h) = (images[0].width as usize, images[0].height as usize);
        let data: Vec<f32> = images.iter().flat_map(|i| i.data.iter().copied()).collect();
        Tensor::<B, 4>::from_data(TensorData::new(data, [images.len(), h, w, 3]), device)
            .permute([0, 3, 1, 2])
    }

    /// Peak signal-to-noise ratio against `reference`, in dB, for values in [0, 1].
    pub fn psnr(&self, reference: &Self) -> f32 {
        assert_eq!(
            (self.width, self.height),
            (reference.width, reference.height),
            "psnr of images of different sizes"
        );
        let mse = self
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| {
                let d = (a.clamp(0.0, 1.0) - b.clamp(0.0, 1.0)) as f64;
                d * d
            })
            .sum::<f64>()
            / self.data.len() as f64;
        (-10.0 * mse.max(1e-12).log10()) as f32
    }

    /// PSNR of each image against its reference (pairs in order), and their mean.
    pub fn mean_psnr(predicted: &[Self], references: &[Self]) -> (Vec<f32>, f32) {
        let psnr: Vec<f32> = predicted
            .iter()
            .zip(references)
            .map(|(p, r)| p.psnr(r))
            .collect();
        let mean = psnr.iter().sum::<f32>() / psnr.len().max(1) as f32;
        (psnr, mean)
    }

    /// Box-filtered down by an integer `factor` (supersampling: render at `factor` times the
    /// size, then average each `factor x factor` block). Sizes must be multiples of `factor`.
    pub fn downsample(&self, factor: u32) -> Self {
        assert!(
            factor > 0 && self.width % factor == 0 && self.height % factor == 0,
            "{}x{} is not a multiple of {factor}",
            self.width,
            self.height
        );
        let (w, h) = (self.width / factor, self.height / factor);
        let f = factor as usize;
        let scale = 1.0 / (f * f) as f32;
        let mut data = vec![0.0f32; 3 * (w * h) as usize];
        for y in 0..h as usize {
            for x in 0..w as usize {
                let out = &mut data[3 * (y * w as usize + x)..][..3];
                for dy in 0..f {
                    for dx in 0..f {
                        let p = self.pixel((x * f + dx) as u32, (y * f + dy) as u32);
                        for c in 0..3 {
                            out[c] += p[c] * scale;
                        }
                    }
                }
            }
        }
        Self {
            width: w,
            height: h,
            data,
        }
    }

    /// Images side by side (a turntable strip); all must share a height.
    pub fn hstack(images: &[Self]) -> Self {
        let height = images[0].height;
        let width = images.iter().map(|i| i.width).sum();
        let mut data = Vec::with_capacity(3 * (width * height) as usize);
        for y in 0..height as usize {
            for image in images {
                let row = 3 * image.width as usize;
                data.extend_from_slice(&image.data[y * row..(y + 1) * row]);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// Rows of images one above the other, left-aligned; narrower rows are padded with white.
    pub fn vstack(rows: &[Self]) -> Self {
        let width = rows.iter().map(|r| r.width).max().unwrap_or(0);
        let mut data = Vec::new();
        for r in rows {
            for y in 0..r.height as usize {
                data.extend_from_slice(
                    &r.data[3 * y * r.width as usize..3 * (y + 1) * r.width as usize],
                );
                data.extend(std::iter::repeat_n(1.0, 3 * (width - r.width) as usize));
            }
        }
        Self {
            width,
            height: rows.iter().map(|r| r.height).sum(),
            data,
        }
    }

    /// 8-bit sRGB-encoded bytes (values are treated as display values and clamped).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .iter()
            .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
            .collect()
    }

    /// Writes a PNG.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<(), ImageWriteError> {
        let path = path.as_ref();
        image::save_buffer(
            path,
            &self.to_rgb8(),
            self.width,
            self.height,
            image::ColorType::Rgb8,
        )
        .map_err(|source| ImageWriteError {
            path: path.display().to_string(),
            source,
        })
    }

    /// Reads an image file (any format the `image` crate reads here: PNG) as 8-bit RGB, the
    /// inverse of [`RgbImage::save_png`] up to its 8-bit rounding.
    pub fn load_png(path: impl AsRef<Path>) -> Result<Self, ImageReadError> {
        let path = path.as_ref();
        let image = image::open(path).map_err(|source| ImageReadError {
            path: path.display().to_string(),
            source,
        })?;
        let rgb = image.to_rgb8();
        Ok(Self {
            width: rgb.width(),
            height: rgb.height(),
            data: rgb.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_error() {
        let a = RgbImage::filled(4, 4, [0.5; 3]);
        let b = RgbImage::filled(4, 4, [0.6; 3]);
        // mse = 0.01 -> 20 dB
        assert!((a.psnr(&b) - 20.0).abs() < 1e-3);
        assert!(a.psnr(&a) > 100.0);
    }

    #[test]
    fn stack_and_tensor_round_trip() {
        use burn::backend::NdArray;
        let a = RgbImage::filled(2, 3, [0.1, 0.2, 0.3]);
        let mut b = RgbImage::filled(2, 3, [0.9; 3]);
        b.data[0] = 0.0;
        let strip = RgbImage::hstack(&[a.clone(), b.clone()]);
        assert_eq!((strip.width, strip.height), (4, 3));
        assert_eq!(strip.pixel(2, 0), [0.0, 0.9, 0.9]);
        assert_eq!(strip.pixel(1, 2), [0.1, 0.2, 0.3]);
        let t = RgbImage::to_tensor::<NdArray>(&[a.clone(), b.clone()], &Default::default());
        assert_eq!(t.dims(), [2, 3, 3, 2]);
        assert_eq!(RgbImage::from_tensor(t), vec![a, b.clone()]);
        // Rows: the narrower one is padded with white on the right.
        let rows = RgbImage::vstack(&[strip.clone(), RgbImage::filled(1, 2, [0.4; 3])]);
        assert_eq!((rows.width, rows.height), (4, 5));
        assert_eq!(rows.pixel(2, 0), [0.0, 0.9, 0.9]);
        assert_eq!(rows.pixel(0, 4), [0.4; 3]);
        // A crop is the window, and out-of-bounds windows are refused.
        assert_eq!(rows.crop(2, 0, 2, 3), Some(b));
        assert_eq!(
            rows.crop(0, 3, 1, 2),
            Some(RgbImage::filled(1, 2, [0.4; 3]))
        );
        assert_eq!(rows.crop(3, 0, 2, 1), None);
        assert_eq!(rows.crop(0, u32::MAX, 1, 2), None);
        assert_eq!(rows.pixel(1, 4), [1.0; 3]);
    }

    #[test]
    fn png_round_trip_and_unreadable_file() {
        let dir = std::env::temp_dir().join(format!("rgb_image_png_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut image = RgbImage::filled(3, 2, [0.25, 0.5, 1.0]);
        image.data[4] = 0.0;
        let path = dir.join("a.png");
        image.save_png(&path).unwrap();
        let back = RgbImage::load_png(&path).unwrap();
        assert_eq!((back.width, back.height), (3, 2));
        for (a, b) in image.data.iter().zip(&back.data) {
            assert!((a - b).abs() <= 0.5 / 255.0 + 1e-6, "{a} vs {b}");
        }
        std::fs::write(dir.join("bad.png"), b"not a png").unwrap();
        let err = RgbImage::load_png(dir.join("bad.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.png"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
