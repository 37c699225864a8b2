import Collectives
import Foundation
import Rendezvous
import Transport

// What one rank runs to check sub-groups, point-to-point and all-to-all with real processes (through
// the collective-check executable). Inputs are small integers, so every check is exact.

/// Splits the world into a rows × cols grid (rank = row·cols + col) and checks every collective on the
/// row groups and the column groups: first one after the other (overlapping groups in turn), then both
/// at once on two threads (a row and a column group share only this rank), with different row groups
/// running different algorithms at the same time; finally the world again, to show its tags are intact.
public func runSubgroupCheck(rows: Int, plan: CollectiveCheckPlan, world: ProcessGroup, log: (String) -> Void) throws -> Int {
    let n = world.worldSize, rank = world.rank
    precondition(n % rows == 0, "a world of \(n) is not \(rows) rows")
    let cols = n / rows
    guard let row = try world.split(color: rank / cols, key: rank % cols),
          let column = try world.split(color: rank % cols, key: rank / cols) else { throw CheckFailure.wrong("rank \(rank) left out of its grid groups") }
    let expectedRow = (0..<cols).map { (rank / cols) * cols + $0 }, expectedColumn = (0..<rows).map { $0 * cols + rank % cols }
    guard row.members == expectedRow, column.members == expectedColumn, row.rank == rank % cols, column.rank == rank / cols else {
        throw CheckFailure.wrong("rank \(rank): row \(row.members) (rank \(row.rank)), column \(column.members) (rank \(column.rank)); expected \(expectedRow), \(expectedColumn)")
    }
    // The explicit-list form: the reversed world, as torch.distributed.new_group(ranks) would.
    guard let reversed = try world.subgroup(ranks: Array((0..<n).reversed())), reversed.rank == n - 1 - rank else {
        throw CheckFailure.wrong("rank \(rank): subgroup(ranks:) of the reversed world")
    }
    // Groups of 2 or more get their own shared arena (two-shot, reduce-scatter and allgather run
    // through it); the reversed world is not the world's order, so it gets one of its own too.
    for group in [row, column, reversed] { try group.attachArena() }
    var checks = 0
    // Disjoint groups run different work at the same time: even rows ring only, odd rows the rest.
    var rowPlan = plan
    if (rank / cols) % 2 == 1 { rowPlan.algorithms = plan.algorithms.reversed() }
    checks += try runCollectiveCheck(rowPlan, group: row, log: log)
    checks += try runCollectiveCheck(plan, group: column, log: log)
    checks += try runCollectiveCheck(plan, group: reversed, log: log)
    checks += try runAllToAllCheck(group: row, seeds: [1, 2], log: log)
    // Row and column at once, on two threads.
    let results = ConcurrentResults()
    let done = DispatchGroup()
    for (name, group, groupPlan) in [("row", row, rowPlan), ("column", column, plan)] {
        done.enter()
        Thread.detachNewThread {
            defer { done.leave() }
            do { results.add(name, .success(try runCollectiveCheck(groupPlan, group: group, log: { _ in }))) }
            catch { results.add(name, .failure(error)) }
        }
    }
    done.wait()
    for (name, result) in results.all {
        switch result {
        case .success(let count): checks += count
        case .failure(let error): throw CheckFailure.wrong("concurrent \(name) group on rank \(rank): \(error)")
        }
    }
    checks += try runCollectiveCheck(plan, group: world, log: log)
    func arena(_ group: ProcessGroup) -> String { group.arena == nil ? "no" : "yes" }
    log("rank \(rank): grid \(rows)x\(cols): row \(row.members) id \(row.id), column \(column.members) id \(column.id); "
        + "arenas: row \(arena(row)), column \(arena(column)), reversed \(arena(reversed))")
    return checks
}

final class ConcurrentResults: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [(String, Result<Int, Error>)] = []
    func add(_ name: String, _ result: Result<Int, Error>) { lock.lock(); results.append((name, result)); lock.unlock() }
    var all: [(String, Result<Int, Error>)] { lock.lock(); defer { lock.unlock() }; return results }
}

/// Value of element k of the block rank `from` sends rank `to` (exact in float32).
@inline(__always) func blockValue(from: Int, to: Int, index k: Int) -> Float { Float((from * 1009 + to * 101 + k * 7) % 2003) - 1000 }

/// Block sizes (elements) for all-to-all-v, the same on every rank for a seed: uneven, with zeros, and
/// for seed 2 some blocks over a megabyte so they cross frame boundaries.
func allToAllCount(from: Int, to: Int, seed: Int) -> Int {
    var h = UInt64(truncatingIfNeeded: from &* 7919 &+ to &* 104_729 &+ seed &* 1_299_709) &* 0x9E37_79B9_7F4A_7C15
    h ^= h >> 29
    if h % 5 == 0 { return 0 }
    return seed == 2 ? Int(h % 400_000) : Int(h % 3000)
}

/// all-to-all-v with uneven splits (zeros included) against the reference, then an even all-to-all.
public func runAllToAllCheck(group: ProcessGroup, seeds: [Int], log: (String) -> Void) throws -> Int {
    let n = group.worldSize, rank = group.rank
    var checks = 0
    for seed in seeds {
        let sendCounts = (0..<n).map { allToAllCount(from: rank, to: $0, seed: seed) }
        let receiveCounts = (0..<n).map { allToAllCount(from: $0, to: rank, seed: seed) }
        var send = [Float](), receive = [Float](repeating: .nan, count: receiveCounts.reduce(0, +))
        for to in 0..<n { for k in 0..<sendCounts[to] { send.append(blockValue(from: rank, to: to, index: k)) } }
        try send.withUnsafeMutableBufferPointer { s in
            try receive.withUnsafeMutableBufferPointer { r in
                try allToAll(s, sendCounts: sendCounts, into: r, receiveCounts: receiveCounts, group: group)
            }
        }
        var offset = 0
        for from in 0..<n {
            for k in 0..<receiveCounts[from] where receive[offset + k] != blockValue(from: from, to: rank, index: k) {
                throw CheckFailure.wrong("all-to-all-v seed \(seed) on \(group.name): element \(k) from rank \(from) is \(receive[offset + k]), expected \(blockValue(from: from, to: rank, index: k))")
            }
            offset += receiveCounts[from]
        }
        checks += 1
    }
    let block = 1000
    var send = (0..<(n * block)).map { blockValue(from: rank, to: $0 / block, index: $0 % block) }
    var receive = [Float](repeating: .nan, count: n * block)
    try send.withUnsafeMutableBufferPointer { s in try receive.withUnsafeMutableBufferPointer { try allToAll(s, into: $0, group: group) } }
    for i in 0..<(n * block) where receive[i] != blockValue(from: i / block, to: rank, index: i % block) {
        throw CheckFailure.wrong("even all-to-all on \(group.name): element \(i) is \(receive[i])")
    }
    return checks + 1
}

/// Point-to-point on the world: ping-pong between ranks 0 and 1, a ring shift, and the pipeline
/// pattern (every rank exchanges with both neighbours of a chain at once, in one batch), at sizes from
/// empty to several frames; then rank 1 waits for a message rank 0 never sends and must time out
/// naming rank 0.
public func runPointToPointCheck(world: ProcessGroup, log: (String) -> Void) throws -> Int {
    let n = world.worldSize, rank = world.rank
    var checks = 0
    func pattern(_ from: Int, _ to: Int, _ count: Int, _ salt: Int) -> [Float] { (0..<count).map { blockValue(from: from, to: to + salt, index: $0) } }
    func verify(_ got: [Float], _ expected: [Float], _ what: String) throws {
        if let i = got.indices.first(where: { got[$0] != expected[$0] }) {
            throw CheckFailure.wrong("\(what) on rank \(rank): element \(i) is \(got[i]), expected \(expected[i])")
        }
    }
    for count in [0, 1, 1000, 300_001] {
        // Ping-pong: 0 sends, 1 answers with each value + 1.
        if rank == 0 {
            var message = pattern(0, 1, count, 0)
            try message.withUnsafeBytes { try send($0, to: 1, tag: 7, group: world) }
            var reply = [Float](repeating: .nan, count: count)
            try reply.withUnsafeMutableBytes { try receive($0, from: 1, tag: 8, group: world) }
            try verify(reply, message.map { $0 + 1 }, "ping-pong of \(count)")
            message.removeAll()
        } else if rank == 1 {
            var message = [Float](repeating: .nan, count: count)
            try message.withUnsafeMutableBytes { try receive($0, from: 0, tag: 7, group: world) }
            try verify(message, pattern(0, 1, count, 0), "ping of \(count)")
            message = message.map { $0 + 1 }
            try message.withUnsafeBytes { try send($0, to: 0, tag: 8, group: world) }
        }
        // Ring shift, every rank at once (a blocking send to the right first would deadlock at sizes
        // over the socket buffers: the batch posts both).
        let right = (rank + 1) % n, left = (rank + n - 1) % n
        var outgoing = pattern(rank, right, count, 1), incoming = [Float](repeating: .nan, count: count)
        try outgoing.withUnsafeMutableBufferPointer { o in
            try incoming.withUnsafeMutableBufferPointer { i in
                try batchSendReceive([.send(o, to: right, tag: 1), .receive(i, from: left, tag: 1)], group: world)
            }
        }
        try verify(incoming, pattern(left, rank, count, 1), "ring shift of \(count)")
        // Chain (pipeline): activations forward to rank+1, gradients back to rank-1, both in one batch.
        var activations = pattern(rank, rank + 1, count, 2), gradients = pattern(rank, rank - 1, count, 3)
        var fromPrevious = [Float](repeating: .nan, count: count), fromNext = [Float](repeating: .nan, count: count)
        try activations.withUnsafeMutableBufferPointer { a in
            try gradients.withUnsafeMutableBufferPointer { g in
                try fromPrevious.withUnsafeMutableBufferPointer { p in
                    try fromNext.withUnsafeMutableBufferPointer { x in
                        var operations: [PointToPoint] = []
                        if rank + 1 < n { operations += [.send(a, to: rank + 1, tag: 2), .receive(x, from: rank + 1, tag: 3)] }
                        if rank > 0 { operations += [.send(g, to: rank - 1, tag: 3), .receive(p, from: rank - 1, tag: 2)] }
                        try batchSendReceive(operations, group: world)
                    }
                }
            }
        }
        if rank > 0 { try verify(fromPrevious, pattern(rank - 1, rank, count, 2), "chain activations of \(count)") }
        if rank + 1 < n { try verify(fromNext, pattern(rank + 1, rank, count, 3), "chain gradients of \(count)") }
        checks += 3
    }
    try barrier(group: world)
    // A receive nobody answers: rank 1 must time out naming rank 0, then tells rank 0, which waited
    // for that (sending nothing meanwhile: any frame would be taken as the answer, and refused).
    var token = [Float](repeating: 0, count: 1)
    if rank == 0 {
        try token.withUnsafeMutableBytes { try receive($0, from: 1, tag: 100, group: world) }
    }
    if rank == 1 {
        defer { try? token.withUnsafeBytes { try send($0, to: 0, tag: 100, group: world) } }
        var nothing = [Float](repeating: 0, count: 4)
        do {
            try nothing.withUnsafeMutableBytes { try receive($0, from: 0, tag: 99, group: world, timeoutSeconds: 1) }
            throw CheckFailure.wrong("a receive with no matching send returned")
        } catch let error as CollectiveError {
            let text = "\(error)"
            guard text.contains("timed out after 1 s"), text.contains("rank 0 at") else {
                throw CheckFailure.wrong("the unanswered receive failed without naming rank 0: \(text)")
            }
            log("rank 1: unanswered receive: \(text)")
        }
        checks += 1
    }
    try barrier(group: world)
    return checks
}
