#if canImport(Glibc)
import Glibc
#endif

/// Owns one 64-byte-aligned block of Float32. Tensors are views into it; nothing copies behind your back.
public final class FloatBuffer: @unchecked Sendable {
    public let base: UnsafeMutablePointer<Float>
    public let count: Int
    /// Mapped straight from the kernel (`init(pagedCount:)`): whole pages can be handed back.
    public let isPaged: Bool
    static let pageBytes = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// Zero-filled storage for `count` floats.
    public init(count: Int) {
        precondition(count >= 0, "negative buffer size \(count)")
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride,
                                                   alignment: 64)
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
        self.count = count
        isPaged = false
    }

    /// Zero-filled storage mapped from the kernel, resident only where written: `zero(_:)` returns the
    /// whole pages of a range, so a buffer of which a rank keeps a piece (ZeRO-2's gradients) costs
    /// that piece in memory, not its length.
    public init(pagedCount count: Int) {
        precondition(count >= 0, "negative buffer size \(count)")
        let bytes = Self.mappedBytes(count)
        guard let raw = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), raw != MAP_FAILED else {
            fatalError("mmap of \(bytes) bytes failed: \(String(cString: strerror(errno))) (out of address space)")
        }
        base = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        self.count = count
        isPaged = true
    }

    static func mappedBytes(_ count: Int) -> Int {
        (max(count, 1) * MemoryLayout<Float>.stride + pageBytes - 1) / pageBytes * pageBytes
    }

    deinit {
        if isPaged { munmap(base, Self.mappedBytes(count)) } else { base.deallocate() }
    }

    /// Sets `range` to zero; in a paged buffer its whole pages go back to the kernel (they read as zero
    /// and cost no memory until written again) unless `releasing` is false, the partial pages at its
    /// ends are cleared.
    public func zero(_ range: Range<Int>, releasing: Bool = true) {
        guard !range.isEmpty else { return }
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "range \(range) outside 0..<\(count)")
        let floatsPerPage = Self.pageBytes / MemoryLayout<Float>.stride
        let first = (range.lowerBound + floatsPerPage - 1) / floatsPerPage * floatsPerPage
        let last = range.upperBound / floatsPerPage * floatsPerPage
        guard isPaged, releasing, first < last else { return (base + range.lowerBound).update(repeating: 0, count: range.count) }
        (base + range.lowerBound).update(repeating: 0, count: first - range.lowerBound)
        (base + last).update(repeating: 0, count: range.upperBound - last)
        // MADV_DONTNEED on private anonymous memory: the pages read back as zeros.
        _ = madvise(UnsafeMutableRawPointer(base + first), (last - first) * MemoryLayout<Float>.stride, MADV_DONTNEED)
    }

    /// Bytes of the buffer's pages resident in memory right now (mincore), for paged buffers; the whole
    /// length otherwise.
    public var residentBytes: Int {
        guard isPaged else { return count * MemoryLayout<Float>.stride }
        let bytes = Self.mappedBytes(count), pages = bytes / Self.pageBytes
        var vector = [UInt8](repeating: 0, count: pages)
        guard mincore(UnsafeMutableRawPointer(base), bytes, &vector) == 0 else { return bytes }
        return vector.reduce(0) { $0 + Int($1 & 1) } * Self.pageBytes
    }

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
