import Foundation

/// An SVG with two panels against message size (log scale): bus bandwidth (GB/s) and time per
/// allreduce (microseconds, log scale), one coloured line per algorithm, with a legend. Readable
/// without the table: axes are labelled and every measured size is a tick.
public func plotSVG(_ results: [BenchResult], title: String) -> String {
    let algorithms = results.map(\.algorithm).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
    let sizes = Array(Set(results.map(\.bytes))).sorted()
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    let panelWidth = 430.0, panelHeight = 300.0, left = 70.0, top = 50.0, gap = 90.0
    let width = left + 2 * panelWidth + gap + 30, height = top + panelHeight + 110
    guard let minSize = sizes.first, let maxSize = sizes.last else {
        return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"400\" height=\"40\"><text x=\"10\" y=\"25\">no results</text></svg>"
    }
    let logMin = log2(Double(minSize)), logMax = max(log2(Double(maxSize)), logMin + 1)
    func x(_ bytes: Int, _ panel: Int) -> Double {
        left + Double(panel) * (panelWidth + gap) + (log2(Double(bytes)) - logMin) / (logMax - logMin) * panelWidth
    }
    let maxBus = max(results.map(\.busbwGBps).max() ?? 1, 1e-9) * 1.1
    func yBus(_ v: Double) -> Double { top + panelHeight - v / maxBus * panelHeight }
    let times = results.map(\.microseconds).filter { $0 > 0 }
    let logTimeMin = floor(log10(times.min() ?? 1)), logTimeMax = max(ceil(log10(times.max() ?? 10)), logTimeMin + 1)
    func yTime(_ us: Double) -> Double {
        top + panelHeight - (log10(max(us, 1e-3)) - logTimeMin) / (logTimeMax - logTimeMin) * panelHeight
    }
    func text(_ s: String, _ px: Double, _ py: Double, anchor: String = "middle", size: Int = 12, extra: String = "") -> String {
        "<text x=\"\(f(px))\" y=\"\(f(py))\" text-anchor=\"\(anchor)\" font-size=\"\(size)\" font-family=\"sans-serif\"\(extra)>\(escape(s))</text>"
    }
    var svg = ["<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(f(width))\" height=\"\(f(height))\" viewBox=\"0 0 \(f(width)) \(f(height))\">",
               "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>",
               text(title, width / 2, 24, size: 15)]
    for panel in 0..<2 {
        let x0 = left + Double(panel) * (panelWidth + gap)
        svg.append("<rect x=\"\(f(x0))\" y=\"\(f(top))\" width=\"\(f(panelWidth))\" height=\"\(f(panelHeight))\" fill=\"none\" stroke=\"#444\"/>")
        for size in sizes {
            let px = x(size, panel)
            svg.append("<line x1=\"\(f(px))\" y1=\"\(f(top))\" x2=\"\(f(px))\" y2=\"\(f(top + panelHeight))\" stroke=\"#ddd\"/>")
            svg.append(text(formatBytes(size), px, top + panelHeight + 16, size: 10))
        }
        svg.append(text("message size (bytes, log scale)", x0 + panelWidth / 2, top + panelHeight + 36))
    }
    for i in 0...5 {
        let v = maxBus * Double(i) / 5, py = yBus(v)
        svg.append("<line x1=\"\(f(left))\" y1=\"\(f(py))\" x2=\"\(f(left + panelWidth))\" y2=\"\(f(py))\" stroke=\"#eee\"/>")
        svg.append(text(String(format: "%.2f", v), left - 6, py + 4, anchor: "end", size: 10))
    }
    svg.append(text("bus bandwidth (GB/s)", 18, top + panelHeight / 2, extra: " transform=\"rotate(-90 18 \(f(top + panelHeight / 2)))\""))
    let x1 = left + panelWidth + gap
    for e in Int(logTimeMin)...Int(logTimeMax) {
        let py = yTime(pow(10, Double(e)))
        svg.append("<line x1=\"\(f(x1))\" y1=\"\(f(py))\" x2=\"\(f(x1 + panelWidth))\" y2=\"\(f(py))\" stroke=\"#eee\"/>")
        svg.append(text(e >= 6 ? "\(Int(pow(10, Double(e - 6)))) s" : e >= 3 ? "\(Int(pow(10, Double(e - 3)))) ms" : "\(Int(pow(10, Double(e)))) us",
                        x1 - 6, py + 4, anchor: "end", size: 10))
    }
    svg.append(text("time per allreduce (log scale)", x1 - 52, top + panelHeight / 2,
                    extra: " transform=\"rotate(-90 \(f(x1 - 52)) \(f(top + panelHeight / 2)))\""))
    for (i, algorithm) in algorithms.enumerated() {
        let color = colors[i % colors.count]
        let points = results.filter { $0.algorithm == algorithm }.sorted { $0.bytes < $1.bytes }
        let bus = points.map { "\(f(x($0.bytes, 0))),\(f(yBus($0.busbwGBps)))" }.joined(separator: " ")
        let time = points.map { "\(f(x($0.bytes, 1))),\(f(yTime($0.microseconds)))" }.joined(separator: " ")
        svg.append("<polyline data-algorithm=\"\(escape(algorithm))\" points=\"\(bus)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"/>")
        svg.append("<polyline data-algorithm=\"\(escape(algorithm))\" points=\"\(time)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"/>")
        for p in points {
            svg.append("<circle cx=\"\(f(x(p.bytes, 0)))\" cy=\"\(f(yBus(p.busbwGBps)))\" r=\"3\" fill=\"\(color)\"/>")
            svg.append("<circle cx=\"\(f(x(p.bytes, 1)))\" cy=\"\(f(yTime(p.microseconds)))\" r=\"3\" fill=\"\(color)\"/>")
        }
        let lx = left + Double(i) * 150, ly = top + panelHeight + 70
        svg.append("<line x1=\"\(f(lx))\" y1=\"\(f(ly))\" x2=\"\(f(lx + 24))\" y2=\"\(f(ly))\" stroke=\"\(color)\" stroke-width=\"3\"/>")
        svg.append(text(algorithm, lx + 30, ly + 4, anchor: "start"))
    }
    svg.append("</svg>")
    return svg.joined(separator: "\n") + "\n"
}

private func f(_ v: Double) -> String { String(format: "%.1f", v) }

private func escape(_ s: String) -> String {
    s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
        .replacingOccurrences(of: "\"", with: "&quot;")
}
