//! Small line charts drawn on the server as inline SVG: no script, no image request. Only numbers reach the
//! markup, so the output is safe to insert unescaped.

/// Chart size in SVG units; it scales to its box (`viewBox`, `preserveAspectRatio="none"`).
const W: f64 = 300.0;
const H: f64 = 60.0;

/// A line through `values` (oldest first), scaled to `0..=max` (or to the largest value when `max` is
/// `None`), with the area under it shaded. Non-finite values count as 0.
pub fn sparkline(values: &[f64], max: Option<f64>, label: &str) -> String {
    let clean: Vec<f64> = values
        .iter()
        .map(|v| if v.is_finite() { v.max(0.0) } else { 0.0 })
        .collect();
    let top = max
        .unwrap_or_else(|| clean.iter().copied().fold(0.0, f64::max))
        .max(f64::MIN_POSITIVE);
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == ' ' || *c == '%')
        .collect();
    let mut svg = format!(
        r#"<svg class="spark" viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" aria-label="{label}">"#
    );
    svg.push_str(&format!(
        r#"<line x1="0" y1="{H}" x2="{W}" y2="{H}" class="axis"/>"#
    ));
    if clean.len() >= 2 {
        let step = W / (clean.len() - 1) as f64;
        let points: Vec<String> = clean
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let y = H - (v / top).min(1.0) * (H - 2.0);
                format!("{:.1},{:.1}", i as f64 * step, y)
            })
            .collect();
        let line = points.join(" ");
        svg.push_str(&format!(
            r#"<polygon class="area" points="0,{H} {line} {W},{H}"/><polyline class="line" points="{line}"/>"#
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_scales_its_points_and_carries_no_text_from_outside() {
        let svg = sparkline(&[0.0, 50.0, 100.0, f64::NAN], Some(100.0), "CPU <b>%");
        assert!(
            svg.contains(r#"points="0.0,60.0 100.0,31.0 200.0,2.0 300.0,60.0""#),
            "{svg}"
        );
        assert!(svg.contains(r#"aria-label="CPU b%""#), "{svg}");
        assert!(!sparkline(&[], None, "x").contains("polyline"));
    }
}
