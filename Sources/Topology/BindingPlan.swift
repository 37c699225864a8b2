/// NUMA nodes with their CPUs and memory, as libnuma reports them (or a fixture in tests).
public struct NumaTopology: Sendable, Equatable {
    public struct Node: Sendable, Equatable {
        public var id: Int
        public var cpus: [Int]
        public var memoryMiB: Int
        public init(id: Int, cpus: [Int], memoryMiB: Int) { self.id = id; self.cpus = cpus; self.memoryMiB = memoryMiB }
    }
    public var nodes: [Node]
    /// False when libnuma says NUMA policy is unavailable: binding falls back to CPU affinity only.
    public var numaAvailable: Bool
    public init(nodes: [Node], numaAvailable: Bool = true) { self.nodes = nodes; self.numaAvailable = numaAvailable }
    public var cpuCount: Int { nodes.reduce(0) { $0 + $1.cpus.count } }
}

public enum BindingPolicy: String, Sendable, CaseIterable {
    /// core when every rank can have its own CPU, else node.
    case auto
    /// Each rank runs on all CPUs of its node, memory bound to the node.
    case node
    /// Each rank gets its own CPUs within its node, memory bound to the node.
    case core
    /// No binding at all.
    case none
}

/// Where one local rank runs.
public struct RankPlacement: Sendable, Equatable {
    public var localRank: Int
    /// nil: not bound.
    public var node: Int?
    public var cpus: [Int]
    public var bindMemory: Bool
    public init(localRank: Int, node: Int?, cpus: [Int], bindMemory: Bool) {
        self.localRank = localRank; self.node = node; self.cpus = cpus; self.bindMemory = bindMemory
    }
}

/// The placement policy, a pure function of the topology: ranks are spread over nodes in contiguous
/// groups (ranks that talk most, neighbours in the ring, share a node), or over evenly spaced nodes
/// when there are fewer ranks than nodes; within a node, `core` gives each
/// rank an equal, disjoint slice of the node's CPUs (in the order the node lists them, so offline CPUs
/// are simply absent), and when a node has fewer CPUs than ranks every rank on it gets the whole node.
public func planBinding(_ topology: NumaTopology, localRanks: Int, policy: BindingPolicy) -> [RankPlacement] {
    let nodes = topology.nodes.filter { !$0.cpus.isEmpty }
    if policy == .none || nodes.isEmpty || localRanks == 0 {
        return (0..<localRanks).map { RankPlacement(localRank: $0, node: nil, cpus: [], bindMemory: false) }
    }
    let effective: BindingPolicy = policy == .auto ? (localRanks <= topology.cpuCount ? .core : .node) : policy
    // Rank r goes to node floor(r * nodes / ranks): contiguous groups when ranks >= nodes, evenly spaced
    // nodes (so likely different sockets) when there are fewer ranks than nodes.
    let nodeOf: [Int] = (0..<localRanks).map { $0 * nodes.count / localRanks }
    var placements: [RankPlacement] = []
    for (index, node) in nodes.enumerated() {
        let ranksHere = (0..<localRanks).filter { nodeOf[$0] == index }
        for (slot, rank) in ranksHere.enumerated() {
            var cpus = node.cpus
            if effective == .core && ranksHere.count <= node.cpus.count {
                let share = node.cpus.count / ranksHere.count
                cpus = Array(node.cpus[(slot * share)..<((slot + 1) * share)])
            }
            placements.append(RankPlacement(localRank: rank, node: node.id, cpus: cpus, bindMemory: topology.numaAvailable))
        }
    }
    return placements.sorted { $0.localRank < $1.localRank }
}

/// The table the launcher prints at start.
/// `columns`: more columns after the placement (a header and a cell per global rank), such as the
/// rank's coordinates in the job's parallel layout.
public func placementTable(_ placements: [RankPlacement], rankOffset: Int, numaAvailable: Bool,
                           columns: (header: String, cell: (Int) -> String)? = nil) -> [String] {
    var lines = ["placement: rank | NUMA node | CPUs | memory" + (columns.map { " | " + $0.header } ?? "")]
    for p in placements {
        let cpus = p.cpus.isEmpty ? "any" : compactList(p.cpus)
        let memory = p.bindMemory ? "bound to node \(p.node ?? 0)" : (p.node == nil ? "any" : "not bound (NUMA unavailable)")
        let rank = p.localRank + rankOffset
        lines.append("placement: \(rank) | \(p.node.map(String.init) ?? "-") | \(cpus) | \(memory)" + (columns.map { " | " + $0.cell(rank) } ?? ""))
    }
    if !numaAvailable { lines.append("placement: warning: libnuma reports NUMA unavailable; using CPU affinity only") }
    return lines
}

/// "0-3,8,10-11"
public func compactList(_ values: [Int]) -> String {
    var parts: [String] = []
    var i = 0
    let v = values.sorted()
    while i < v.count {
        var j = i
        while j + 1 < v.count && v[j + 1] == v[j] + 1 { j += 1 }
        parts.append(i == j ? "\(v[i])" : "\(v[i])-\(v[j])")
        i = j + 1
    }
    return parts.joined(separator: ",")
}

public func parseList(_ text: String) -> [Int]? {
    var out: [Int] = []
    for part in text.split(separator: ",") {
        let ends = part.split(separator: "-")
        guard let a = Int(ends[0]) else { return nil }
        if ends.count == 2 { guard let b = Int(ends[1]), b >= a else { return nil }; out += Array(a...b) }
        else if ends.count == 1 { out.append(a) } else { return nil }
    }
    return out
}
