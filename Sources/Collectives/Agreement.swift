import CShims
import Rendezvous

/// The lowest rank whose `value` differs from rank 0's, or nil when all ranks agree. The 32-bit values
/// travel as two exact 16-bit halves per rank through an allgather (every rank learns the answer).
public func firstRankDiffering(_ value: UInt32, group: ProcessGroup) throws -> Int? {
    let n = group.worldSize
    guard n > 1 else { return nil }
    let halves = UnsafeMutableBufferPointer<Float>.allocate(capacity: 2 * n)
    defer { halves.deallocate() }
    halves.initialize(repeating: 0)
    halves[2 * group.rank] = Float(value >> 16)
    halves[2 * group.rank + 1] = Float(value & 0xFFFF)
    // Two floats per rank: segmentRange(2n, n, r) is exactly [2r, 2r+2).
    try allgather(halves, group: group)
    return (1..<n).first { halves[2 * $0] != halves[0] || halves[2 * $0 + 1] != halves[1] }
}

/// CRC-32C of a float buffer's bytes (for comparing replicas across ranks).
public func checksum(of buffer: UnsafeMutableBufferPointer<Float>) -> UInt32 {
    guard let base = buffer.baseAddress, buffer.count > 0 else { return 0 }
    return ddp_crc32c(0, base, buffer.count * 4)
}
