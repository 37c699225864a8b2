import Tensors

/// One named parameter: a view into the flat parameter buffer and the same range of the gradient buffer.
public struct Parameter: Sendable {
    public let name: String
    public let shape: [Int]
    public let offset: Int
    public let value: Tensor
    public let gradient: Tensor
    /// AdamW decays only matrices and embeddings (>= 2 dimensions), as nanoGPT does.
    public var decays: Bool { shape.count >= 2 }
}

/// All parameters of a model in one flat buffer and their gradients in another, in registration
/// (forward) order, so optimizers, checkpoints and allreduce buckets work on contiguous slices.
public final class ParameterSet: @unchecked Sendable {
    public private(set) var parameters: [Parameter] = []
    public let values: FloatBuffer
    public let gradients: FloatBuffer

    /// Layouts are built first (names and shapes), storage is then allocated once.
    public struct Layout {
        var entries: [(name: String, shape: [Int])] = []
        public init() {}
        public mutating func add(_ name: String, _ shape: [Int]) { entries.append((name, shape)) }
        /// Floats so far.
        public var totalCount: Int { entries.reduce(0) { $0 + $1.shape.reduce(1, *) } }
        /// The tensors' names, in order.
        public var names: [String] { entries.map(\.name) }
        /// Floats of the tensors whose names `include` accepts.
        public func count(where include: (String) -> Bool) -> Int {
            entries.filter { include($0.name) }.reduce(0) { $0 + $1.shape.reduce(1, *) }
        }
    }

    public init(layout: Layout) {
        // Paged, as the gradients: ZeRO-3 hands back the pages of the pieces other ranks own.
        values = FloatBuffer(pagedCount: layout.totalCount)
        // Paged: ZeRO-2 hands back the pages of the pieces other ranks own.
        gradients = FloatBuffer(pagedCount: layout.totalCount)
        var offset = 0
        var seen = Set<String>()
        for (name, shape) in layout.entries {
            precondition(seen.insert(name).inserted, "parameter \(name) registered twice")
            parameters.append(Parameter(name: name, shape: shape, offset: offset,
                                        value: Tensor(owner: values, offset: offset, shape: shape),
                                        gradient: Tensor(owner: gradients, offset: offset, shape: shape)))
            offset += shape.reduce(1, *)
        }
    }

    public var count: Int { values.count }

    public subscript(name: String) -> Parameter {
        guard let p = parameters.first(where: { $0.name == name }) else { preconditionFailure("no parameter \(name)") }
        return p
    }

    public func zeroGradients() { gradients.buffer.update(repeating: 0) }

    /// Global L2 norm of all gradients.
    public func gradientNorm() -> Float { Float(sumOfSquares(gradients.base, count: count).squareRoot()) }

    /// Scales gradients so their global norm is at most maxNorm (PyTorch's clip_grad_norm_); returns the
    /// norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Float) -> Float {
        let norm = gradientNorm()
        clipGradients(in: [0..<count], norm: norm, maxNorm: maxNorm)
        return norm
    }

    /// Clipping when the norm was computed elsewhere (ZeRO-1: over all ranks' pieces); scales `ranges` only.
    public func clipGradients(in ranges: [Range<Int>], norm: Float, maxNorm: Float) {
        guard maxNorm > 0 && norm > maxNorm else { return }
        for r in ranges where !r.isEmpty { scale(gradients.base + r.lowerBound, by: maxNorm / (norm + 1e-6), count: r.count) }
    }
}
