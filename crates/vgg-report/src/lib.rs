//! What vgg draws for people, apart from its text: the benchmark report, one self-contained HTML
//! page ([`page`]), `vgg explain`'s page ([`explain_page`]) and pictures ([`pictures`]: heat
//! maps, activation and filter grids, PNG), and every figure as SVG ([`figures`]: the network diagram, the receptive
//! fields, the training curves and the report's charts), with the number formats they share
//! ([`numbers`]). The command line only chooses what to draw and where to write it.

mod alike;
mod comparison;
mod explain_page;
pub mod figures;
pub mod numbers;
mod page;
pub mod pictures;

pub use comparison::comparison_table;
pub use explain_page::{explain_page, ExplainPage, ExplainedImage, Figure};
pub use page::{distinct_names, page, roofline_chart};

/// Why a page or figure could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The plotting library failed (its message).
    #[error("drawing the figure: {0}")]
    Drawing(String),
    /// A report was asked for no run at all.
    #[error("a report needs at least one record")]
    NoRuns,
    /// Writing into the page's text failed.
    #[error("writing the page: {0}")]
    Format(#[from] std::fmt::Error),
}

/// This crate's results.
pub type Result<T> = std::result::Result<T, ReportError>;
