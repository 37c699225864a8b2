// What a tensor-parallel layer needs from its tensor-parallel group. NN knows no sockets: the Parallel
// target implements this over a ProcessGroup. All four are collective: every rank of the group calls
// them in the same order with the same lengths.

public protocol TensorParallelCommunicator: AnyObject {
    var rank: Int { get }
    var size: Int { get }
    /// In place: every rank ends with the elementwise sum.
    func allreduceSum(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    /// In place: every rank ends with the elementwise maximum.
    func allreduceMax(_ buffer: UnsafeMutableBufferPointer<Float>) throws
    /// `full` holds `size` equal segments; afterwards segment `rank` holds their sum over ranks (the
    /// other segments are unspecified).
    func reduceScatter(_ full: UnsafeMutableBufferPointer<Float>) throws
    /// Segment r of `full` comes from rank r.
    func allgather(_ full: UnsafeMutableBufferPointer<Float>) throws
}

/// Megatron-style tensor parallelism of one model replica over `communicator`'s ranks; with
/// `sequenceParallel` the LayerNorm and residual regions hold 1/size of the rows (Korthikanti et al.).
public struct TensorParallelism {
    public let communicator: TensorParallelCommunicator
    public let sequenceParallel: Bool
    public init(communicator: TensorParallelCommunicator, sequenceParallel: Bool) {
        self.communicator = communicator; self.sequenceParallel = sequenceParallel
    }
    public var rank: Int { communicator.rank }
    public var size: Int { communicator.size }

    /// Rows this rank holds in the LayerNorm/residual regions.
    public func localRows(_ rows: Int) -> Int { sequenceParallel ? rows / size : rows }

    /// Megatron's f forward (identity) or, with sequence parallelism, the all-gather of the local rows
    /// into `full` [rows, width]; returns the full-rows input of the column-parallel layer.
    func gatherRows(_ local: UnsafePointer<Float>, rows: Int, width: Int, full: UnsafeMutablePointer<Float>) throws -> UnsafePointer<Float> {
        guard sequenceParallel else { return local }
        let n = rows / size * width
        (full + rank * n).update(from: local, count: n)
        try communicator.allgather(UnsafeMutableBufferPointer(start: full, count: rows * width))
        return UnsafePointer(full)
    }

    /// Megatron's g forward (and f backward): sums `partial` [rows, width] over the group; returns the
    /// rows this rank keeps (all of them, or its sequence segment with sequence parallelism).
    func reduceRows(_ partial: UnsafeMutablePointer<Float>, rows: Int, width: Int) throws -> UnsafeMutablePointer<Float> {
        let buffer = UnsafeMutableBufferPointer(start: partial, count: rows * width)
        guard sequenceParallel else {
            try communicator.allreduceSum(buffer)
            return partial
        }
        try communicator.reduceScatter(buffer)
        return partial + rank * (rows / size) * width
    }
}
