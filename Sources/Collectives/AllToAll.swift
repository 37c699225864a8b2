import Rendezvous
import Transport

// All-to-all (MPI_Alltoall / torch all_to_all_single) and all-to-all-v (uneven splits, zero-length
// blocks allowed): rank r's send buffer holds one block per destination, in rank order, and its
// receive buffer gets one block per source, in rank order. Pairwise exchange: in step k (1..<N) rank r
// sends its block for r+k while receiving the block from r-k, full duplex and chunked by the engine,
// so every step keeps both directions of two links busy and no rank waits on a rank that is itself
// waiting; small blocks post every step at once instead. The own block is a local copy. Each rank moves (N-1)/N of its data; busbw = algbw·(N-1)/N.

/// Offsets of consecutive blocks of the given sizes.
func blockOffsets(_ counts: [Int]) -> [Int] {
    var offsets = [Int](repeating: 0, count: counts.count), total = 0
    for (i, c) in counts.enumerated() { offsets[i] = total; total += c }
    return offsets
}

/// all-to-all-v on raw bytes: block j of `send` (sendCounts[j] bytes) goes to rank j; block i of
/// `receive` (receiveCounts[i] bytes) comes from rank i. Rank i's sendCounts[r] must equal rank r's
/// receiveCounts[i] (a mismatched length is a rejected frame naming both lengths).
public func allToAll(send: UnsafeRawBufferPointer, sendCounts: [Int], receive: UnsafeMutableRawBufferPointer, receiveCounts: [Int],
                     group: ProcessGroup) throws {
    let n = group.worldSize, rank = group.rank
    precondition(sendCounts.count == n && receiveCounts.count == n, "all-to-all needs one count per rank of \(n)")
    precondition(sendCounts.allSatisfy { $0 >= 0 } && receiveCounts.allSatisfy { $0 >= 0 }, "negative all-to-all count")
    precondition(sendCounts.reduce(0, +) <= send.count && receiveCounts.reduce(0, +) <= receive.count,
                 "all-to-all counts exceed the buffers (\(send.count) B to send, \(receive.count) B to receive)")
    let sendOffsets = blockOffsets(sendCounts), receiveOffsets = blockOffsets(receiveCounts)
    precondition(sendCounts[rank] == receiveCounts[rank], "rank \(rank) sends itself \(sendCounts[rank]) B but expects \(receiveCounts[rank]) B")
    if sendCounts[rank] > 0 {
        receive.baseAddress!.advanced(by: receiveOffsets[rank])
            .copyMemory(from: send.baseAddress!.advanced(by: sendOffsets[rank]), byteCount: sendCounts[rank])
    }
    guard n > 1 else { return }
    let tag = group.nextTag()
    // Frames of at least 1 MiB: all-to-all blocks are whole messages, and fewer, larger frames measured
    // faster here (4 ranks, 4 MiB: 1.6-1.7 GB/s busbw against 1.5 with 256 KiB frames). Every rank
    // computes the same size, so frame lengths match.
    var settings = group.exchangeSettings
    settings.chunkBytes = max(settings.chunkBytes, 1 << 20)
    func outgoing(_ to: Int) -> OutgoingMessage {
        OutgoingMessage(group.connection(to: to), tag: tag, bytes: UnsafeRawBufferPointer(rebasing: send[sendOffsets[to]..<(sendOffsets[to] + sendCounts[to])]))
    }
    func incoming(_ from: Int) -> IncomingMessage {
        IncomingMessage(group.connection(to: from), tag: tag,
                        buffer: UnsafeMutableRawBufferPointer(rebasing: receive[receiveOffsets[from]..<(receiveOffsets[from] + receiveCounts[from])]))
    }
    let largestBlock = max(sendCounts.max() ?? 0, receiveCounts.max() ?? 0)
    try guarded(group) {
        if largestBlock <= allToAllAtOnceBytes {
            // Small blocks: post every step at once (one wait for all of them instead of N-1 in turn).
            let steps = Array(1..<n)
            try exchangeMessages(sending: steps.map { outgoing((rank + $0) % n) }, receiving: steps.map { incoming((rank - $0 + n) % n) },
                                 settings: settings, operation: "all-to-all on \(group.name)")
            return
        }
        for step in 1..<n {
            let to = (rank + step) % n, from = (rank - step + n) % n
            try exchangeMessages(sending: [outgoing(to)], receiving: [incoming(from)], settings: settings,
                                 operation: "all-to-all step \(step)/\(n - 1) on \(group.name) (to \(to), from \(from))")
        }
    }
}

/// Blocks up to this size go all at once; larger ones in pairwise steps (4 ranks: posting everything
/// at once won up to 1 MiB in total, 256 KiB blocks, 1.8-2.7 GB/s against 1.1-2.3; pairwise won at 4 MiB,
/// 1.9-2.1 against 1.6-1.7; even at 16 MiB). Each rank may choose alone: the frames on every
/// connection are the same either way.
let allToAllAtOnceBytes = 256 << 10

/// all-to-all-v on floats; counts are in elements.
public func allToAll(_ send: UnsafeMutableBufferPointer<Float>, sendCounts: [Int], into receive: UnsafeMutableBufferPointer<Float>,
                     receiveCounts: [Int], group: ProcessGroup) throws {
    try allToAll(send: UnsafeRawBufferPointer(send), sendCounts: sendCounts.map { $0 * 4 },
                 receive: UnsafeMutableRawBufferPointer(receive), receiveCounts: receiveCounts.map { $0 * 4 }, group: group)
}

/// Even all-to-all on floats: both buffers hold N blocks of count/N elements.
public func allToAll(_ send: UnsafeMutableBufferPointer<Float>, into receive: UnsafeMutableBufferPointer<Float>, group: ProcessGroup) throws {
    let n = group.worldSize
    precondition(send.count == receive.count && send.count % n == 0, "even all-to-all needs equal buffers divisible by \(n)")
    let counts = [Int](repeating: send.count / n, count: n)
    try allToAll(send, sendCounts: counts, into: receive, receiveCounts: counts, group: group)
}
