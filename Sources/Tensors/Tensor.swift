/// Owns one 64-byte-aligned block of Float32. Tensors are views into it; nothing copies behind your back.
public final class FloatBuffer: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Float>
    public let count: Int

    /// Zero-filled storage for `count` floats.
    public init(count: Int) {
        precondition(count >= 0, "negative buffer size \(count)")
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride,
                                                   alignment: 64)
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
        self.count = count
    }

    deinit { base.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: base, count: count) }
}

/// A contiguous, row-major Float32 view with a shape. It keeps its owner alive; views share storage.
public struct Tensor: @unchecked Sendable {
    public let data: UnsafeMutablePointer<Float>
    public let shape: [Int]
    public let owner: FloatBuffer

    public var count: Int { shape.reduce(1, *) }
    public var rank: Int { shape.count }
    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }

    /// A new zero-filled tensor with its own storage.
    public init(zeros shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        let owner = FloatBuffer(count: shape.reduce(1, *))
        self.init(owner: owner, offset: 0, shape: shape)
    }

    /// A view of `shape.product` floats starting at `offset` in `owner`.
    public init(owner: FloatBuffer, offset: Int, shape: [Int]) {
        let n = shape.reduce(1, *)
        precondition(offset >= 0 && offset + n <= owner.count,
                     "view [\(offset), \(offset + n)) outside buffer of \(owner.count)")
        self.owner = owner
        self.data = owner.base + offset
        self.shape = shape
    }

    public init(shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
        self.init(zeros: shape)
        for i in values.indices { data[i] = values[i] }
    }

    /// The same storage seen with another shape of the same element count.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        return Tensor(owner: owner, offset: data - owner.base, shape: newShape)
    }

    public subscript(i: Int) -> Float {
        get { data[i] }
        nonmutating set { data[i] = newValue }
    }

    public func toArray() -> [Float] { Array(buffer) }

    public func fill(_ value: Float) { buffer.update(repeating: value) }

    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy of \(other.shape) into \(shape)")
        data.update(from: other.data, count: count)
    }
}
