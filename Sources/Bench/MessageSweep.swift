import Collectives
import Foundation
import Rendezvous
import Transport

/// The point-to-point and all-to-all benchmarks, with nccl-tests' definitions:
/// - sendrecv: every rank sends `bytes` to rank+1 while receiving `bytes` from rank-1 (one batched
///   call); busbw = algbw.
/// - pingpong: ranks 0 and 1 only; rank 0 sends, rank 1 sends it back; time is half the round trip
///   (one-way latency), algbw = bytes / one-way time.
/// - alltoall: `bytes` is each rank's whole send buffer (N blocks of bytes/N); busbw = algbw·(N-1)/N.
public enum MessagePattern: String, Sendable, CaseIterable {
    case sendrecv, pingpong, alltoall
}

/// Runs `pattern` over the sizes on this rank; every rank returns the same results (slowest rank's
/// median trial). With `check`, one more round with known values counts wrong elements over all ranks.
public func runMessageSweep(_ pattern: MessagePattern, sizes: [Int], iterations: Int, warmup: Int, trials: Int, check: Bool,
                            group: ProcessGroup) throws -> [BenchResult] {
    let n = group.worldSize, rank = group.rank
    precondition(pattern != .pingpong || n >= 2, "pingpong needs 2 ranks")
    let capacity = max((sizes.max() ?? 4) / 4, 1)
    let send = UnsafeMutableBufferPointer<Float>.allocate(capacity: capacity), receive = UnsafeMutableBufferPointer<Float>.allocate(capacity: capacity)
    defer { send.deallocate(); receive.deallocate() }
    send.initialize(repeating: 1); receive.initialize(repeating: 0)
    let scalar = UnsafeMutableBufferPointer<Float>.allocate(capacity: 1)
    defer { scalar.deallocate() }
    let right = (rank + 1) % n, left = (rank + n - 1) % n
    func once(_ count: Int) throws {
        let out = UnsafeMutableBufferPointer(rebasing: send[0..<count]), into = UnsafeMutableBufferPointer(rebasing: receive[0..<count])
        switch pattern {
        case .sendrecv:
            try batchSendReceive([.send(out, to: right, tag: 1), .receive(into, from: left, tag: 1)], group: group)
        case .pingpong:
            if rank == 0 {
                try batchSendReceive([.send(out, to: 1, tag: 2)], group: group)
                try batchSendReceive([.receive(into, from: 1, tag: 3)], group: group)
            } else if rank == 1 {
                try batchSendReceive([.receive(into, from: 0, tag: 2)], group: group)
                try batchSendReceive([.send(into, to: 0, tag: 3)], group: group)
            }
        case .alltoall:
            try allToAll(out, into: into, group: group)
        }
    }
    var results: [BenchResult] = []
    for bytes in sizes {
        // All-to-all needs whole blocks of floats per rank.
        let count = pattern == .alltoall ? bytes / 4 / n * n : bytes / 4
        guard count > 0 else { continue }
        let perTrial = iterationsPerTrial(iterations: iterations, trials: trials, bytes: bytes)
        for _ in 0..<warmup { try once(count) }
        var times: [Double] = []
        for _ in 0..<trials {
            try barrier(group: group)
            let start = Deadline.now()
            for _ in 0..<perTrial { try once(count) }
            let perCall = (Deadline.now() - start) / Double(perTrial)
            times.append(try aggregate(pattern == .pingpong ? perCall / 2 : perCall, .slowest, group: group, scalar: scalar))
        }
        var wrong = 0
        if check {
            wrong = try checkOnce(pattern, count: count, send: send, receive: receive, group: group, run: once)
            wrong = try countOverRanks(wrong, key: "wrong/\(pattern.rawValue)/\(bytes)", group: group)
            send.initialize(repeating: 1)
        }
        let factor: Double = pattern == .alltoall ? Double(n - 1) / Double(n) : 1
        let median = times.sorted()[times.count / 2]
        results.append(BenchResult(algorithm: pattern.rawValue, bytes: count * 4, ranks: n, seconds: median, wrong: wrong, busFactor: factor))
    }
    return results
}

/// One round with values that say where they came from; returns this rank's wrong elements.
private func checkOnce(_ pattern: MessagePattern, count: Int, send: UnsafeMutableBufferPointer<Float>, receive: UnsafeMutableBufferPointer<Float>,
                       group: ProcessGroup, run: (Int) throws -> Void) throws -> Int {
    let n = group.worldSize, rank = group.rank
    func value(from: Int, index: Int) -> Float { Float((from * 131 + index * 7) % 1021) }
    let block = count / n
    for i in 0..<count {
        // All-to-all: element k of the block for destination d carries index k + 1000·d.
        send[i] = value(from: rank, index: pattern == .alltoall ? i % block + (i / block) * 1000 : i)
        receive[i] = .nan
    }
    try run(count)
    var wrong = 0
    switch pattern {
    case .sendrecv:
        let left = (rank + n - 1) % n
        for i in 0..<count where receive[i] != value(from: left, index: i) { wrong += 1 }
    case .pingpong:
        if rank == 0 { for i in 0..<count where receive[i] != value(from: 0, index: i) { wrong += 1 } }
    case .alltoall:
        // Block s of the result came from rank s, which sent its block for us (index offset rank·1000).
        for s in 0..<n { for k in 0..<block where receive[s * block + k] != value(from: s, index: k + rank * 1000) { wrong += 1 } }
    }
    return wrong
}
