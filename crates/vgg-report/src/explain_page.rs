//! The page of `vgg explain`: each image's pictures side by side with its top classes, and the
//! first layer's filters; self-contained like the report (pictures inline as data: URIs, style
//! inline, no script), so it opens offline and can be mailed as one file.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::page::{escape, STYLE};
use crate::Result;

/// A picture on the page: its caption and PNG bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Said under the picture.
    pub caption: String,
    /// The picture, PNG.
    pub png: Vec<u8>,
}

/// One explained image.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainedImage {
    /// The file, as given.
    pub name: String,
    /// (class, probability, name) of the most probable classes, best first.
    pub top: Vec<(usize, f32, String)>,
    /// What was explained, in words ("class 281 (tabby), Grad-CAM at conv5_3").
    pub explained: String,
    /// Its pictures, in order.
    pub figures: Vec<Figure>,
}

/// Everything the page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainPage {
    /// The network and its weights, in words.
    pub network: String,
    /// How the maps were made, one line each.
    pub notes: Vec<String>,
    /// The first layer's filters, where drawn.
    pub filters: Option<Figure>,
    /// The images.
    pub images: Vec<ExplainedImage>,
}

fn figure(h: &mut String, f: &Figure) -> Result<()> {
    let data = base64::engine::general_purpose::STANDARD.encode(&f.png);
    write!(
        h,
        "<figure><img src=\"data:image/png;base64,{data}\" alt=\"{c}\"><figcaption>{c}</figcaption></figure>",
        c = escape(&f.caption)
    )?;
    Ok(())
}

/// The page, as HTML.
pub fn explain_page(p: &ExplainPage) -> Result<String> {
    let mut h = String::new();
    write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>What {n} looks at</title>\
         <style>{STYLE}figure{{margin:0}}figcaption{{font-size:12px;color:#555;max-width:320px}}\
         img{{image-rendering:pixelated;max-width:100%}}</style></head><body><h1>What {n} looks at</h1>",
        n = escape(&p.network)
    )?;
    for note in &p.notes {
        write!(h, "<p class=\"note\">{}</p>", escape(note))?;
    }
    for image in &p.images {
        write!(
            h,
            "<h2>{}</h2><p>{}</p><table><tr><th>rank</th><th>class</th><th>name</th><th>probability</th></tr>",
            escape(&image.name),
            escape(&image.explained)
        )?;
        for (rank, (class, probability, name)) in image.top.iter().enumerate() {
            write!(
                h,
                "<tr><td>{}</td><td>{class}</td><td class=\"text\">{}</td><td>{:.2}%</td></tr>",
                rank + 1,
                escape(name),
                100.0 * probability
            )?;
        }
        h.push_str("</table><div class=\"charts\">");
        for f in &image.figures {
            figure(&mut h, f)?;
        }
        h.push_str("</div>");
    }
    if let Some(f) = &p.filters {
        h.push_str("<h2>The first layer's filters</h2><div class=\"charts\">");
        figure(&mut h, f)?;
        h.push_str("</div>");
    }
    h.push_str("</body></html>\n");
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_holds_every_picture_inline_and_escapes_names() {
        let png = crate::pictures::png(&image::RgbImage::new(2, 2));
        let page = explain_page(&ExplainPage {
            network: "VGG-11".into(),
            notes: vec!["Grad-CAM <at> conv5_2".into()],
            filters: Some(Figure {
                caption: "conv1_1".into(),
                png: png.clone(),
            }),
            images: vec![ExplainedImage {
                name: "<script>.png".into(),
                top: vec![(3, 0.5, "cat & dog".into())],
                explained: "class 3".into(),
                figures: vec![Figure {
                    caption: "Grad-CAM".into(),
                    png,
                }],
            }],
        })
        .unwrap();
        assert_eq!(page.matches("src=\"data:image/png;base64,").count(), 2);
        assert!(page.contains("&lt;script&gt;.png") && !page.contains("<script>"));
        assert!(page.contains("cat &amp; dog") && page.contains("50.00%"));
        assert!(page.contains("Grad-CAM &lt;at&gt; conv5_2"));
        assert!(!page.contains("http"), "nothing fetched");
    }
}
