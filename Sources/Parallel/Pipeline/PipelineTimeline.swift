// A pipeline step drawn as in the GPipe and zero-bubble papers: one row per rank, time to the right,
// one box per forward (F), backward (B), input-gradient (I) and weight-gradient (W) pass labelled with
// its micro-batch, waits for a neighbour hatched, the rest of the row idle. Works for simulated and
// measured intervals alike.

public func pipelineTimelineSVG(_ intervals: [[PipelineInterval]], title: String, width: Double = 1000) -> String {
    let rowHeight = 28.0, left = 70.0, top = 34.0, right = 16.0
    let end = intervals.flatMap { $0.map(\.end) }.max() ?? 1
    let start = intervals.flatMap { $0.map(\.start) }.min() ?? 0
    let span = max(end - start, 1e-12)
    let scale = (width - left - right) / span
    let height = top + Double(intervals.count) * rowHeight + 40
    func x(_ t: Double) -> Double { left + (t - start) * scale }
    func fmt(_ v: Double) -> String { format1(v) }
    var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(fmt(width))\" height=\"\(fmt(height))\" font-family=\"sans-serif\" font-size=\"11\">\n"
    svg += "<defs><pattern id=\"wait\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\"><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#bbb\" stroke-width=\"2\"/></pattern></defs>\n"
    svg += "<text x=\"\(fmt(left))\" y=\"18\" font-size=\"13\">\(escapeXML(title))</text>\n"
    let colours: [PipelineAction.Kind: String] = [.forward: "#4e79a7", .backward: "#59a14f", .backwardInput: "#8cd17d",
                                                  .backwardWeight: "#b07aa1", .step: "#f28e2b"]
    for (rank, row) in intervals.enumerated() {
        let y = top + Double(rank) * rowHeight
        svg += "<text x=\"8\" y=\"\(fmt(y + 17))\">rank \(rank)</text>\n"
        svg += "<rect x=\"\(fmt(left))\" y=\"\(fmt(y + 2))\" width=\"\(fmt(width - left - right))\" height=\"\(fmt(rowHeight - 4))\" fill=\"#f4f4f4\"/>\n"
        for interval in row {
            let w = max((interval.end - interval.start) * scale, 0.5)
            let fill = interval.action.kind.isReceive ? "url(#wait)" : (colours[interval.action.kind] ?? "#999")
            svg += "<rect x=\"\(fmt(x(interval.start)))\" y=\"\(fmt(y + 2))\" width=\"\(fmt(w))\" height=\"\(fmt(rowHeight - 4))\" fill=\"\(fill)\" stroke=\"white\" stroke-width=\"0.5\"><title>\(interval.action)</title></rect>\n"
            if interval.action.kind.isCompute && interval.action.kind != .step && w >= 14 {
                svg += "<text x=\"\(fmt(x(interval.start) + w / 2))\" y=\"\(fmt(y + 18))\" text-anchor=\"middle\" fill=\"white\">\(interval.action.kind.rawValue)\(interval.action.microbatch)</text>\n"
            }
        }
    }
    let legendY = top + Double(intervals.count) * rowHeight + 20
    var lx = left
    for (label, fill) in [("F forward", "#4e79a7"), ("B backward", "#59a14f"), ("I input grad", "#8cd17d"), ("W weight grad", "#b07aa1"),
                          ("STEP", "#f28e2b"), ("waiting", "url(#wait)")] {
        svg += "<rect x=\"\(fmt(lx))\" y=\"\(fmt(legendY - 10))\" width=\"12\" height=\"12\" fill=\"\(fill)\"/><text x=\"\(fmt(lx + 16))\" y=\"\(fmt(legendY))\">\(label)</text>\n"
        lx += 120
    }
    return svg + "</svg>\n"
}

private func format1(_ v: Double) -> String {
    let r = (v * 10).rounded() / 10
    return r == r.rounded() ? String(Int(r)) : String(r)
}

private func escapeXML(_ s: String) -> String {
    var out = ""
    for c in s {
        switch c {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        default: out.append(c)
        }
    }
    return out
}
