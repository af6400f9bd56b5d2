//! The chart `vgpuctl record --png` draws: achieved share over time, one
//! solid line per vGPU, its configured share dashed in the same colour.
//!
//! Drawn with plotters' bitmap backend into memory and written with the
//! `png` crate. Text uses a font embedded in the binary (DejaVu Sans cut
//! down to ASCII, `assets/`), so no system font, fontconfig or freetype
//! is needed.

use std::io::Write;

use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::register_font;

use super::record::Point;

/// The chart's size in pixels.
pub const WIDTH: u32 = 1000;
pub const HEIGHT: u32 = 500;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans-ascii.ttf");

/// A line colour per vGPU, in order (Tableau 10).
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Why a chart was not written.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("no samples to draw (did the recording see any vGPU twice?)")]
    NoData,
    #[error("the embedded font does not load")]
    Font,
    #[error("drawing: {0}")]
    Draw(String),
    #[error("encoding the PNG: {0}")]
    Png(#[from] png::EncodingError),
}

/// The colour at 60 % brightness: a configured line beside its achieved one.
fn darker(c: RGBColor) -> RGBColor {
    let f = |x: u8| (x as u16 * 3 / 5) as u8;
    RGBColor(f(c.0), f(c.1), f(c.2))
}

fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Draw `points` under `title` into an RGB buffer of [`WIDTH`] × [`HEIGHT`].
pub fn draw(points: &[Point], title: &str) -> Result<Vec<u8>, ChartError> {
    let t_max = points.iter().map(|p| p.time_s).fold(0.0, f64::max);
    if points.is_empty() || t_max <= 0.0 {
        return Err(ChartError::NoData);
    }
    register_font("sans-serif", FontStyle::Normal, FONT).map_err(|_| ChartError::Font)?;
    let mut vgpus: Vec<(&str, &str)> = Vec::new();
    for p in points {
        if !vgpus.iter().any(|v| v.0 == p.uuid) {
            vgpus.push((&p.uuid, &p.type_id));
        }
    }
    let mut buf = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..1f64)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("time (s)")
            .y_desc("share of the engine")
            .label_style(("sans-serif", 14))
            .light_line_style(RGBColor(244, 244, 244))
            .draw()
            .map_err(draw_err)?;
        // Achieved shares first, then the configured ones dashed on top in
        // a darker shade, so that a share held exactly still shows both.
        for (i, (uuid, type_id)) in vgpus.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let short = uuid.get(..8).unwrap_or(uuid);
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .filter(|p| p.uuid == *uuid)
                        .map(|p| (p.time_s, p.achieved)),
                    colour.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(format!("{type_id} {short} achieved"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
                });
        }
        for (i, (uuid, type_id)) in vgpus.iter().enumerate() {
            let colour = darker(COLOURS[i % COLOURS.len()]);
            let short = uuid.get(..8).unwrap_or(uuid);
            let configured: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.uuid == *uuid)
                .filter_map(|p| p.configured.map(|c| (p.time_s, c)))
                .collect();
            let (Some(first), Some(last)) = (configured.first(), configured.last()) else {
                continue;
            };
            let label = if configured.iter().all(|c| c.1 == first.1) {
                format!("{type_id} {short} configured {:.3}", last.1)
            } else {
                format!("{type_id} {short} configured")
            };
            chart
                .draw_series(DashedLineSeries::new(
                    configured,
                    10,
                    6,
                    colour.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(label)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 3, colour.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(draw_err)?;
        root.present().map_err(draw_err)?;
    }
    Ok(buf)
}

/// Draw `points` and write the chart as a PNG to `w`.
pub fn write_png(w: impl Write, points: &[Point], title: &str) -> Result<(), ChartError> {
    let rgb = draw(points, title)?;
    let mut enc = png::Encoder::new(w, WIDTH, HEIGHT);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    // A chart is mostly flat colour: the best compression is ~4x smaller
    // than the default and still takes milliseconds.
    enc.set_compression(png::Compression::Best);
    enc.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut out = enc.write_header()?;
    out.write_image_data(&rgb)?;
    out.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, uuid: &str, c: f64, a: f64) -> Point {
        Point {
            time_s: t,
            uuid: uuid.into(),
            type_id: "vgpud-4c".into(),
            configured: Some(c),
            achieved: a,
        }
    }

    #[test]
    fn the_chart_is_a_png_of_its_size_with_a_line_per_vgpu() {
        let pts: Vec<Point> = (1..=10)
            .flat_map(|i| {
                let t = i as f64 * 0.2;
                [point(t, "u1", 0.5, 0.49), point(t, "u2", 0.25, 0.26)]
            })
            .collect();
        let rgb = draw(&pts, "test").unwrap();
        // Both vGPUs' colours are on the canvas.
        let has = |c: RGBColor| rgb.chunks_exact(3).any(|p| p == [c.0, c.1, c.2]);
        assert!(has(COLOURS[0]) && has(COLOURS[1]));
        assert!(!has(COLOURS[2]));
        let mut png_bytes = Vec::new();
        write_png(&mut png_bytes, &pts, "test").unwrap();
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, after the chunk length and type.
        assert_eq!(&png_bytes[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes(png_bytes[16..20].try_into().unwrap()),
            WIDTH
        );
        assert_eq!(
            u32::from_be_bytes(png_bytes[20..24].try_into().unwrap()),
            HEIGHT
        );
        assert!(matches!(draw(&[], "x"), Err(ChartError::NoData)));
    }
}
