// Slurm's compressed lists, expanded as `scontrol show hostnames` and SLURM_TASKS_PER_NODE readers do:
//   hostlists   "tux[0-5,12,20-25],login1"  "node[001-003]" (zero padding kept)  "r[1-2]n[1-2]" (each bracket a dimension)
//   task counts "2(x3),1" = [2, 2, 2, 1]

public struct HostlistError: Error, CustomStringConvertible, Equatable {
    public let text: String
    public let problem: String
    public var description: String { "'\(text)': \(problem)" }
}

/// Every host name of a Slurm hostlist, in order.
public func expandHostlist(_ text: String) throws -> [String] {
    var hosts: [String] = []
    for item in try splitTopLevel(text) where !item.isEmpty { hosts += try expandHostItem(item, whole: text) }
    return hosts
}

/// Splits at commas outside brackets.
func splitTopLevel(_ text: String) throws -> [String] {
    var items: [String] = [], current = "", depth = 0
    for c in text {
        switch c {
        case "[": depth += 1; guard depth == 1 else { throw HostlistError(text: text, problem: "nested '['") }; current.append(c)
        case "]": depth -= 1; guard depth == 0 else { throw HostlistError(text: text, problem: "']' without '['") }; current.append(c)
        case "," where depth == 0: items.append(current); current = ""
        default: current.append(c)
        }
    }
    guard depth == 0 else { throw HostlistError(text: text, problem: "'[' without ']'") }
    items.append(current)
    return items
}

/// "r[1-2]n[01-02]" -> r1n01 r1n02 r2n01 r2n02.
func expandHostItem(_ item: String, whole: String) throws -> [String] {
    guard let open = item.firstIndex(of: "[") else { return [item] }
    guard let close = item[open...].firstIndex(of: "]") else { throw HostlistError(text: whole, problem: "'[' without ']'") }
    let prefix = String(item[..<open]), body = item[item.index(after: open)..<close]
    let rest = try expandHostItem(String(item[item.index(after: close)...]), whole: whole)
    var out: [String] = []
    for part in body.split(separator: ",", omittingEmptySubsequences: false) {
        let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(bounds.count), let low = Int(bounds[0]), let high = Int(bounds.last!), low <= high, high - low < 1_000_000 else {
            throw HostlistError(text: whole, problem: "'\(part)' is not a number or a range low-high")
        }
        let width = bounds[0].count
        for n in low...high {
            var digits = String(n)
            if digits.count < width { digits = String(repeating: "0", count: width - digits.count) + digits }
            out += rest.map { prefix + digits + $0 }
        }
    }
    return out
}

/// SLURM_TASKS_PER_NODE / SLURM_STEP_TASKS_PER_NODE: "2(x3),1" -> [2, 2, 2, 1].
public func expandTasksPerNode(_ text: String) throws -> [Int] {
    var out: [Int] = []
    for item in text.split(separator: ",", omittingEmptySubsequences: false) {
        var count = item[...], repeats = 1
        if let open = item.firstIndex(of: "(") {
            guard item.hasSuffix(")"), item[item.index(after: open)...].hasPrefix("x"),
                  let r = Int(item[item.index(open, offsetBy: 2)..<item.index(before: item.endIndex)]), r >= 1 else {
                throw HostlistError(text: text, problem: "'\(item)' is not N or N(xR)")
            }
            repeats = r; count = item[..<open]
        }
        guard let n = Int(count), n >= 1, repeats <= 1_000_000 else { throw HostlistError(text: text, problem: "'\(item)' is not N or N(xR)") }
        out += Array(repeating: n, count: repeats)
    }
    return out
}
