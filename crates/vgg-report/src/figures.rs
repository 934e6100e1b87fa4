//! Figures, drawn as SVG with plotters: the network diagram (`summary --format svg`), the
//! receptive fields (`rf --format svg`), the training curves (`train --plot`) and the benchmark
//! report's charts, the roofline among them. SVG text is laid out by the viewer, so no font is needed here.

mod bench;
mod network;
mod rf;
mod roofline;
mod training;

pub use bench::*;
pub use network::network_diagram;
pub use rf::{receptive_fields, FieldStep, WeightComparison};
pub use roofline::{roofline, RooflinePoint, Roofs};
pub use training::{training_curves, EpochPoint};

use crate::{ReportError, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

pub(crate) const CONV: RGBColor = RGBColor(78, 121, 167);
pub(crate) const POOL: RGBColor = RGBColor(225, 87, 89);
pub(crate) const LINEAR: RGBColor = RGBColor(89, 161, 79);
pub(crate) const SOFTMAX: RGBColor = RGBColor(242, 142, 43);
pub(crate) const INK: RGBColor = RGBColor(40, 40, 40);
pub(crate) const TRAIN: RGBColor = RGBColor(31, 119, 180);
pub(crate) const TEST: RGBColor = RGBColor(214, 39, 40);

/// Plotters' errors borrow the backend's; ours own a message.
pub(crate) fn drawn<T, E: std::fmt::Debug>(r: std::result::Result<T, E>) -> Result<T> {
    r.map_err(|e| ReportError::Drawing(format!("{e:?}")))
}

pub(crate) fn text(size: u32, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    ("sans-serif", size)
        .into_font()
        .color(&colour)
        .pos(Pos::new(h, v))
}
