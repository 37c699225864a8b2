// The parallel layout: how a job's ranks are arranged into tensor-, data-, pipeline- and
// expert-parallel groups. A pure value: sizes in, coordinates and group members out, tested without
// sockets. Ranks are numbered in Megatron-LM's order "tp-cp-ep-dp-pp" (tensor fastest, pipeline
// slowest; no context parallelism here):
//
//     rank = tensor + tp · (data + dp · pipeline)
//
// so the ranks of one tensor-parallel group are adjacent (on one host, where their per-layer
// allreduces are cheapest) and a pipeline group strides across the whole job. Expert groups are carved
// out of the data-parallel group as Megatron and DeepSpeed do: the data-parallel index splits as
//
//     data = expert + ep · expertData
//
// so an expert-parallel group is ep consecutive members of a data-parallel group (they exchange tokens
// by all-to-all), and the expert-data-parallel group (which averages one expert's gradients) takes
// every ep-th member.

/// A layout that cannot work, naming the config key.
public struct LayoutError: Error, Equatable, CustomStringConvertible {
    public let key: String
    public let reason: String
    public init(key: String, _ reason: String) { self.key = key; self.reason = reason }
    public var description: String { "\(key): \(reason)" }
}

public struct ParallelLayout: Sendable, Equatable, CustomStringConvertible {
    public let worldSize: Int
    public let tensorParallel: Int
    public let pipelineParallel: Int
    public let expertParallel: Int
    /// What remains of the world: worldSize / (tensorParallel × pipelineParallel).
    public let dataParallel: Int
    public var expertDataParallel: Int { dataParallel / expertParallel }

    /// `heads` (the model's attention heads) is checked against tensorParallel when given; `experts`
    /// against expertParallel.
    public init(worldSize: Int, tensorParallel: Int = 1, pipelineParallel: Int = 1, expertParallel: Int = 1,
                heads: Int? = nil, experts: Int? = nil) throws {
        guard worldSize >= 1 else { throw LayoutError(key: "world_size", "must be at least 1, not \(worldSize)") }
        for (key, value) in [("tensor_parallel", tensorParallel), ("pipeline_parallel", pipelineParallel), ("expert_parallel", expertParallel)] {
            guard value >= 1 else { throw LayoutError(key: key, "must be at least 1, not \(value)") }
        }
        let modelParallel = tensorParallel.multipliedReportingOverflow(by: pipelineParallel)
        guard !modelParallel.overflow, worldSize % modelParallel.partialValue == 0 else {
            throw LayoutError(key: "tensor_parallel", "tensor_parallel \(tensorParallel) × pipeline_parallel \(pipelineParallel) does not divide the world size \(worldSize)")
        }
        let data = worldSize / modelParallel.partialValue
        if let heads, heads % tensorParallel != 0 {
            throw LayoutError(key: "tensor_parallel", "\(tensorParallel) does not divide n_head \(heads)")
        }
        guard data % expertParallel == 0 else {
            throw LayoutError(key: "expert_parallel", "\(expertParallel) does not divide the data-parallel size \(data) (world \(worldSize) / (tensor_parallel \(tensorParallel) × pipeline_parallel \(pipelineParallel)))")
        }
        if let experts, experts % expertParallel != 0 {
            throw LayoutError(key: "expert_parallel", "\(expertParallel) does not divide n_experts \(experts)")
        }
        self.worldSize = worldSize; self.tensorParallel = tensorParallel; self.pipelineParallel = pipelineParallel
        self.expertParallel = expertParallel; dataParallel = data
    }

    /// Where a rank sits on each axis.
    public struct Coordinates: Sendable, Equatable {
        public var tensor: Int, data: Int, pipeline: Int
        /// The data index split for experts: data = expert + expertParallel · expertData.
        public var expert: Int, expertData: Int
        public init(tensor: Int, data: Int, pipeline: Int, expert: Int, expertData: Int) {
            self.tensor = tensor; self.data = data; self.pipeline = pipeline; self.expert = expert; self.expertData = expertData
        }
    }

    public func coordinates(of rank: Int) -> Coordinates {
        precondition(rank >= 0 && rank < worldSize, "rank \(rank) outside 0..<\(worldSize)")
        let tensor = rank % tensorParallel
        let data = (rank / tensorParallel) % dataParallel
        let pipeline = rank / (tensorParallel * dataParallel)
        return Coordinates(tensor: tensor, data: data, pipeline: pipeline,
                           expert: data % expertParallel, expertData: data / expertParallel)
    }

    public func rank(tensor: Int, data: Int, pipeline: Int) -> Int {
        tensor + tensorParallel * (data + dataParallel * pipeline)
    }

    /// The kinds of group a layout has.
    public enum Axis: String, Sendable, CaseIterable {
        case tensor, data, pipeline, expert, expertData = "expert-data"
        /// Tensor × pipeline: the ranks that hold one whole model replica between them.
        case model
    }

    /// The members (global ranks, in group-rank order) of `rank`'s group along `axis`.
    public func members(_ axis: Axis, of rank: Int) -> [Int] {
        let c = coordinates(of: rank)
        switch axis {
        case .tensor: return (0..<tensorParallel).map { self.rank(tensor: $0, data: c.data, pipeline: c.pipeline) }
        case .data: return (0..<dataParallel).map { self.rank(tensor: c.tensor, data: $0, pipeline: c.pipeline) }
        case .pipeline: return (0..<pipelineParallel).map { self.rank(tensor: c.tensor, data: c.data, pipeline: $0) }
        case .expert:
            return (0..<expertParallel).map { self.rank(tensor: c.tensor, data: $0 + expertParallel * c.expertData, pipeline: c.pipeline) }
        case .expertData:
            return (0..<expertDataParallel).map { self.rank(tensor: c.tensor, data: c.expert + expertParallel * $0, pipeline: c.pipeline) }
        case .model:
            return (0..<pipelineParallel).flatMap { p in (0..<tensorParallel).map { self.rank(tensor: $0, data: c.data, pipeline: p) } }
        }
    }

    /// Every group along `axis`: a partition of the world, ordered by each group's lowest rank.
    public func groups(_ axis: Axis) -> [[Int]] {
        var seen = Set<Int>(), out: [[Int]] = []
        for rank in 0..<worldSize where !seen.contains(rank) {
            let g = members(axis, of: rank)
            g.forEach { seen.insert($0) }
            out.append(g)
        }
        return out
    }

    public var description: String {
        "world \(worldSize) = tensor \(tensorParallel) × data \(dataParallel) × pipeline \(pipelineParallel)"
            + (expertParallel > 1 ? " (expert \(expertParallel) × expert-data \(expertDataParallel) within data)" : "")
    }

    /// The columns of `rank`'s row in a start-up table (after the rank): coordinates and group members,
    /// with the header for them.
    public var tableHeader: String {
        "tensor | data | pipeline | expert | TP group | DP group | PP group" + (expertParallel > 1 ? " | EP group" : "")
    }
    public func tableCells(of r: Int) -> String {
        let c = coordinates(of: r)
        func list(_ a: Axis) -> String { members(a, of: r).map(String.init).joined(separator: ",") }
        return "\(c.tensor) | \(c.data) | \(c.pipeline) | \(c.expert) | \(list(.tensor)) | \(list(.data)) | \(list(.pipeline))"
            + (expertParallel > 1 ? " | \(list(.expert))" : "")
    }

    /// One line per rank for a start-up table: coordinates and group members.
    public func table() -> [String] {
        ["rank | " + tableHeader] + (0..<worldSize).map { "\($0) | " + tableCells(of: $0) }
    }
}
