#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Transport
import XCTest

/// The arena with every rank's handle mapped in this process, each rank a thread (real processes run
/// it in CollectivesTests: SharedMemoryProcessTests, CollectiveProcessTests, FaultTests).
final class SharedArenaTests: XCTestCase {
    func makeArena(ranks: Int, slotBytes: Int) throws -> [SharedArena] {
        let (first, name) = try SharedArena.create(ranks: ranks, slotBytes: slotBytes)
        defer { shm_unlink(name) }
        return [first] + (try (1..<ranks).map { try SharedArena.open(name: name, ranks: ranks, rank: $0, slotBytes: slotBytes) })
    }

    /// Three ranks pass 40 long pieces through their slots, each meeting the others twice a piece: every
    /// rank reads exactly what each other wrote, with either kind of store; the first long pieces try
    /// both kinds in turn on every rank alike, and both kinds end up measured.
    func testPiecesCrossWithBothKindsOfStoreAndTheChoiceFollowsItsRule() throws {
        let ranks = 3, floats = 16 << 10 // 64 KiB per rank: long pieces
        let arenas = try makeArena(ranks: ranks, slotBytes: 4 * floats)
        let policy = WaitPolicy(timeoutSeconds: 10, spinMicroseconds: 20)
        final class Results: @unchecked Sendable {
            let lock = NSLock()
            var kinds: [[Bool]], failures: [String]
            init(_ ranks: Int) { kinds = Array(repeating: [], count: ranks); failures = Array(repeating: "", count: ranks) }
        }
        let results = Results(ranks)
        // One thread per rank, all at once (a pool narrower than the ranks would never let them meet).
        let threads = (0..<ranks).map { rank in Thread {
            let arena = arenas[rank]
            var kinds = [Bool](), failures = ""
            defer { results.lock.lock(); results.kinds[rank] = kinds; results.failures[rank] = failures; results.lock.unlock() }
            var mine = [Float](repeating: 0, count: floats), theirs = [Float](repeating: 0, count: floats)
            do {
                for piece in 0..<40 {
                    for i in 0..<floats { mine[i] = Float(piece * 1000 + rank * 100 + i % 97) }
                    let slot = arena.beginPiece(bytes: 4 * floats)
                    kinds.append(arena.streaming)
                    mine.withUnsafeBytes { arena.write(slot(rank), from: $0.baseAddress!, bytes: 4 * floats) }
                    try arena.meet(connections: [Connection?](repeating: nil, count: ranks), policy: policy, operation: "piece \(piece)")
                    for other in 0..<ranks where other != rank {
                        theirs.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: slot(other), byteCount: 4 * floats) }
                        for i in stride(from: 0, to: floats, by: 511) where theirs[i] != Float(piece * 1000 + other * 100 + i % 97) {
                            failures += "piece \(piece): rank \(other)'s element \(i) is \(theirs[i]); "
                        }
                    }
                    try arena.meet(connections: [Connection?](repeating: nil, count: ranks), policy: policy, operation: "piece \(piece)")
                    arena.endPiece(bytes: 4 * floats)
                }
            } catch { failures += "\(error)" }
        } }
        for thread in threads { thread.start() }
        let deadline = Deadline(seconds: 60)
        while threads.contains(where: { !$0.isFinished }) && !deadline.hasPassed { usleep(10_000) }
        // Under the lock the threads wrote with: a finished thread is not a happens-before edge
        // ThreadSanitizer can see.
        results.lock.lock()
        let (kinds, failures) = (results.kinds, results.failures)
        results.lock.unlock()
        for rank in 0..<ranks { XCTAssertEqual(failures[rank], "", "rank \(rank)") }
        XCTAssertEqual(Array(kinds[0].prefix(9)), [false, true, false, true, false, true, false, true, false])
        XCTAssertTrue(kinds.allSatisfy { $0.count == 40 })
        XCTAssertEqual(Array(kinds[1].prefix(9)), Array(kinds[0].prefix(9)), "the trials run on the same pieces on every rank")
        let measured = arenas[0].measuredCosts
        XCTAssertGreaterThan(measured.cached, 0); XCTAssertGreaterThan(measured.streaming, 0)
        // The rule itself: both kinds in turn, then the cheaper, the other one piece in 32.
        XCTAssertEqual((1...9).map { SharedArena.streams(longPiece: $0, costs: [0, 0]) }, [false, true, false, true, false, true, false, true, false])
        XCTAssertFalse(SharedArena.streams(longPiece: 10, costs: [1, 2]))
        XCTAssertTrue(SharedArena.streams(longPiece: 10, costs: [2, 1]))
        XCTAssertTrue(SharedArena.streams(longPiece: 32, costs: [1, 2]), "a trial of the dearer kind")
        XCTAssertFalse(SharedArena.streams(longPiece: 64, costs: [2, 1]), "a trial of the dearer kind")
    }

    /// A rank that arrives and exits at once (its last collective done) while another sleeps in the same
    /// meeting: the sleeper must see the arrival, not the closed connection (it once saw the latter
    /// first). Then a rank that closes without arriving: the waiter fails naming it.
    func testARankThatArrivesAndExitsIsNotTakenForDead() throws {
        for _ in 0..<20 {
            let arenas = try makeArena(ranks: 2, slotBytes: 4096)
            var fds: [Int32] = [0, 0]
            XCTAssertEqual(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds), 0)
            let toRank1 = Connection(fd: fds[0], peer: PeerDescription(rank: 1, host: "socketpair", port: 0),
                                     policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0))
            let rank1End = fds[1]
            let exiting = Thread {
                usleep(5_000)
                try? arenas[1].meet(connections: [nil, nil], policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0), operation: "rank 1")
                close(rank1End)
            }
            exiting.start()
            XCTAssertNoThrow(try arenas[0].meet(connections: [nil, toRank1], policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0),
                                                operation: "rank 0 waiting"))
            while !exiting.isFinished { usleep(1_000) }
            // The next meeting: rank 1 is gone for good.
            XCTAssertThrowsError(try arenas[0].meet(connections: [nil, toRank1], policy: WaitPolicy(timeoutSeconds: 5, spinMicroseconds: 0),
                                                    operation: "rank 0 waiting again")) { error in
                XCTAssertTrue("\(error)".contains("rank 1") && "\(error)".contains("connection closed by peer"), "\(error)")
            }
        }
    }

    /// A rank that never arrives: the others' meeting ends by the timeout, with an error that says so.
    func testAMeetingWithoutOneRankTimesOut() throws {
        let arenas = try makeArena(ranks: 2, slotBytes: 4096)
        let started = Deadline.now()
        XCTAssertThrowsError(try arenas[0].meet(connections: [nil, nil], policy: WaitPolicy(timeoutSeconds: 0.2, spinMicroseconds: 10),
                                                operation: "waiting for rank 1")) { error in
            XCTAssertTrue("\(error)".contains("waiting for rank 1") && "\(error)".contains("timed out"), "\(error)")
        }
        XCTAssertLessThan(Deadline.now() - started, 2)
    }
}
