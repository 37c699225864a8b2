import Rendezvous
import Transport

// Recursive halving-doubling allreduce (Rabenseifner; few steps, good for small messages).
// With p the largest power of two <= N, the N-p "extra" ranks first fold their whole vector into a
// partner among the first p. Then log2(p) halving steps: partners at distance p/2, p/4, ... exchange
// half of the range they are still responsible for and add the half they keep, so after the last step
// each of the p ranks owns 1/p of the vector fully reduced. The doubling steps replay this backwards,
// swapping finished halves, and the extra ranks receive the result from their partner. Each element is
// reduced on exactly one rank, so all ranks end bitwise identical.

public func halvingDoublingAllreduce(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    guard n > 1 else { return }
    let tag = group.nextTag()
    let p = HalvingDoublingSchedule.powerOfTwo(below: n)
    let all = UnsafeMutableRawBufferPointer(buffer)
    let none = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    if rank >= p {
        try exchange(group, tag: tag, sendTo: rank - p, sendBytes: UnsafeRawBufferPointer(all), receiveFrom: nil, receiveBuffer: none,
                     operation: "halving-doubling fold on \(group.name)")
        try exchange(group, tag: tag, sendTo: nil, sendBytes: UnsafeRawBufferPointer(start: nil, count: 0), receiveFrom: rank - p,
                     receiveBuffer: all, operation: "halving-doubling result on \(group.name)")
        return
    }
    let scratch = group.scratchFloats(max(buffer.count, 1))
    if rank + p < n {
        try exchange(group, tag: tag, sendTo: nil, sendBytes: UnsafeRawBufferPointer(start: nil, count: 0), receiveFrom: rank + p,
                     receiveBuffer: mutableBytesOf(scratch, 0..<buffer.count),
                     operation: "halving-doubling fold on \(group.name)")
        op.combine(buffer.baseAddress!, scratch.baseAddress!, count: buffer.count)
    }
    if buffer.count * 4 <= recursiveDoublingBytes {
        // Small vectors: exchange the whole vector with each partner and add (log2 p steps instead of
        // 2 log2 p). Both partners add the same two vectors, and float addition is commutative, so the
        // results stay bitwise identical.
        var distance = 1
        while distance < p {
            let partner = rank ^ distance
            try exchange(group, tag: tag, sendTo: partner, sendBytes: UnsafeRawBufferPointer(all), receiveFrom: partner,
                         receiveBuffer: mutableBytesOf(scratch, 0..<buffer.count),
                         operation: "recursive doubling step on \(group.name)")
            op.combine(buffer.baseAddress!, scratch.baseAddress!, count: buffer.count)
            distance *= 2
        }
        op.finish(buffer, worldSize: n)
    } else {
        try halvingThenDoubling(buffer, op: op, group: group, tag: tag, scratch: scratch)
    }
    if rank + p < n {
        try exchange(group, tag: tag, sendTo: rank + p, sendBytes: UnsafeRawBufferPointer(all), receiveFrom: nil, receiveBuffer: none,
                     operation: "halving-doubling result on \(group.name)")
    }
}

/// Up to this size the doubling variant (whole-vector exchanges) wins: latency dominates bandwidth.
public let recursiveDoublingBytes = 16 << 10

func halvingThenDoubling(_ buffer: UnsafeMutableBufferPointer<Float>, op: ReduceOp, group: ProcessGroup, tag: UInt32,
                         scratch: UnsafeMutableBufferPointer<Float>) throws {
    let n = group.worldSize, rank = group.rank
    let steps = HalvingDoublingSchedule.steps(rank: rank, worldSize: n, count: buffer.count)
    for (index, step) in steps.enumerated() {
        let destination = buffer.baseAddress! + step.keep.lowerBound
        try exchange(group, tag: tag, sendTo: step.partner, sendBytes: bytesOf(buffer, step.give),
                     receiveFrom: step.partner, receiveBuffer: mutableBytesOf(scratch, 0..<step.keep.count),
                     operation: "halving step \(index + 1)/\(steps.count) on \(group.name)") { bytes in
            op.combine(destination + bytes.lowerBound / 4, scratch.baseAddress! + bytes.lowerBound / 4, count: bytes.count / 4)
        }
    }
    let owned = steps.last?.keep ?? 0..<buffer.count
    op.finish(UnsafeMutableBufferPointer(rebasing: buffer[owned]), worldSize: n)
    for (index, step) in steps.enumerated().reversed() {
        try exchange(group, tag: tag, sendTo: step.partner, sendBytes: bytesOf(buffer, step.keep),
                     receiveFrom: step.partner, receiveBuffer: mutableBytesOf(buffer, step.give),
                     operation: "doubling step \(index + 1)/\(steps.count) on \(group.name)")
    }
}
