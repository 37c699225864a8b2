import Rendezvous
import Transport

// Ring allreduce with bfloat16 on the wire and float32 arithmetic (gradient compression: half the
// bytes of the float32 ring). Each hop rounds the segment it sends to bf16 (round to nearest even);
// the receiver widens to float32 and reduces in float32. The rank owning a finished segment rounds it
// to bf16 before the allgather, so the values it keeps are exactly the ones everyone else receives and
// all ranks still end bitwise identical. Error: about one bf16 rounding (2^-9 relative) per hop.

/// How gradients travel: float32, or bfloat16 (compression, float32 accumulation on receive).
public enum WireFormat: String, Sendable, CaseIterable, Codable {
    case float32 = "none", bfloat16 = "bf16"
}

/// float32 -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
@inline(__always) public func bfloat16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    if bits & 0x7FFF_FFFF > 0x7F80_0000 { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}

@inline(__always) public func floatFromBFloat16(_ h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

/// dst[i] = bf16(src[i]).
func encodeBFloat16(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<UInt16>, count n: Int) {
    typealias U = SIMD8<UInt32>
    var i = 0
    while i + 8 <= n {
        let bits = UnsafeRawPointer(src + i).loadUnaligned(as: U.self)
        let rounded = (bits &+ U(repeating: 0x7FFF) &+ ((bits &>> 16) & U(repeating: 1))) &>> 16
        let isNaN = (bits & U(repeating: 0x7FFF_FFFF)) .> U(repeating: 0x7F80_0000)
        let quiet = (bits &>> 16) | U(repeating: 0x0040)
        let halves = SIMD8<UInt16>(truncatingIfNeeded: rounded.replacing(with: quiet, where: isNaN))
        UnsafeMutableRawPointer(dst + i).storeBytes(of: halves, as: SIMD8<UInt16>.self)
        i += 8
    }
    while i < n { dst[i] = bfloat16Bits(src[i]); i += 1 }
}

/// dst[i] = float(src[i]).
func decodeBFloat16(_ src: UnsafePointer<UInt16>, _ dst: UnsafeMutablePointer<Float>, count n: Int) {
    var i = 0
    while i + 8 <= n {
        let halves = UnsafeRawPointer(src + i).loadUnaligned(as: SIMD8<UInt16>.self)
        let bits = SIMD8<UInt32>(truncatingIfNeeded: halves) &<< 16
        UnsafeMutableRawPointer(dst + i).storeBytes(of: bits, as: SIMD8<UInt32>.self)
        i += 8
    }
    while i < n { dst[i] = floatFromBFloat16(src[i]); i += 1 }
}

/// Rounds every element to the nearest bf16 value, in place.
public func roundToBFloat16(_ buffer: UnsafeMutableBufferPointer<Float>) {
    for i in buffer.indices { buffer[i] = floatFromBFloat16(bfloat16Bits(buffer[i])) }
}

/// The N-1 steps both phases share: each step encodes the segment `schedule` sends to bf16, sends it to
/// the right neighbour while receiving one from the left, and hands every landed chunk to `onChunk`:
/// where the received segment lives in `buffer`, the bf16 values, and the elements of the segment they
/// cover. Phases differ only in what they do with a chunk.
private func bf16RingSteps(_ buffer: UnsafeMutableBufferPointer<Float>, group: ProcessGroup, tag: UInt32, phase: String,
                           schedule: (_ rank: Int, _ worldSize: Int, _ step: Int) -> (send: Int, receive: Int),
                           onChunk: (_ destination: UnsafeMutablePointer<Float>, _ incoming: UnsafePointer<UInt16>, _ elements: Range<Int>) -> Void) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let right = (rank + 1) % n, left = (rank + n - 1) % n
    let maxSegment = max(segmentRange(count: buffer.count, parts: n, index: 0).count, 1)
    let wire = group.scratchHalves(2 * maxSegment)
    let outgoing = wire.baseAddress!, incoming = wire.baseAddress! + maxSegment
    for step in 0..<(n - 1) {
        let (sendIndex, receiveIndex) = schedule(rank, n, step)
        let send = segmentRange(count: buffer.count, parts: n, index: sendIndex)
        let receive = segmentRange(count: buffer.count, parts: n, index: receiveIndex)
        let destination = buffer.baseAddress! + receive.lowerBound
        if !send.isEmpty { encodeBFloat16(buffer.baseAddress! + send.lowerBound, outgoing, count: send.count) }
        try exchange(group, tag: tag, sendTo: right, sendBytes: UnsafeRawBufferPointer(start: outgoing, count: send.count * 2),
                     receiveFrom: left, receiveBuffer: UnsafeMutableRawBufferPointer(start: incoming, count: receive.count * 2),
                     operation: "bf16 ring \(phase) step \(step + 1)/\(n - 1) on \(group.name)") { bytes in
            onChunk(destination, incoming, (bytes.lowerBound / 2)..<(bytes.upperBound / 2))
        }
    }
}

/// Ring reduce-scatter with bf16 on the wire; afterwards segment `rank` holds the reduction rounded
/// to bf16, other segments partial sums.
public func compressedRingReduceScatter(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup,
                                        tag: UInt32? = nil) throws {
    let n = group.worldSize
    let widened = group.scratchFloats(n > 1 ? max(segmentRange(count: buffer.count, parts: n, index: 0).count, 1) : 1)
    try bf16RingSteps(buffer, group: group, tag: tag ?? group.nextTag(), phase: "reduce-scatter",
                      schedule: RingSchedule.reduceScatter) { destination, incoming, elements in
        decodeBFloat16(incoming + elements.lowerBound, widened.baseAddress! + elements.lowerBound, count: elements.count)
        op.combine(destination + elements.lowerBound, widened.baseAddress! + elements.lowerBound, count: elements.count)
    }
    let own = UnsafeMutableBufferPointer(rebasing: buffer[segmentRange(count: buffer.count, parts: n, index: group.rank)])
    op.finish(own, worldSize: n)
    if n > 1 { roundToBFloat16(own) }
}

/// Ring allgather of bf16-exact values with bf16 on the wire (lossless for such values).
public func compressedRingAllgather(_ buffer: UnsafeMutableBufferPointer<Float>, group: ProcessGroup, tag: UInt32? = nil) throws {
    guard group.worldSize > 1 else { return }
    try bf16RingSteps(buffer, group: group, tag: tag ?? group.nextTag(), phase: "allgather",
                      schedule: RingSchedule.allgather) { destination, incoming, elements in
        decodeBFloat16(incoming + elements.lowerBound, destination + elements.lowerBound, count: elements.count)
    }
}

public func compressedRingAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let tag = group.nextTag()
    try compressedRingReduceScatter(buffer, op: op, group: group, tag: tag)
    try compressedRingAllgather(buffer, group: group, tag: tag)
}
