#if canImport(Glibc)
import Glibc
#endif
import Transport
import XCTest

/// The shared-memory lane's rings, both ends mapped in this process (the rank-to-rank use over real
/// processes is in CollectivesTests' SharedMemoryProcessTests).
final class SharedMemoryLaneTests: XCTestCase {
    func makePair(ringBytes: Int = 4096) throws -> (SharedMemoryLane, SharedMemoryLane) {
        let (creator, name) = try SharedMemoryLane.create(ringBytes: ringBytes)
        defer { shm_unlink(name) }
        return (creator, try SharedMemoryLane.open(name: name, ringBytes: ringBytes))
    }

    /// Bytes cross in order, both directions at once, through many wraps of a 4 KiB ring, in pieces
    /// of awkward sizes; a full ring takes nothing more and an empty one gives nothing.
    func testBytesCrossInOrderThroughTheWrapBothWays() throws {
        let (a, b) = try makePair()
        let message = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 8) }
        var sentAB = 0, sentBA = 0
        var gotAB = [UInt8](), gotBA = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 3001)
        var step = 0
        while gotAB.count < message.count || gotBA.count < message.count {
            step += 1
            message.withUnsafeBytes { m in
                let piece = [1, 24, 777, 4096, 5000][step % 5]
                let headerLike = min(piece / 3, message.count - sentAB)
                sentAB += a.write(UnsafeRawBufferPointer(rebasing: m[sentAB..<(sentAB + headerLike)]),
                                  UnsafeRawBufferPointer(rebasing: m[(sentAB + headerLike)..<min(message.count, sentAB + piece)]))
                sentBA += b.write(UnsafeRawBufferPointer(rebasing: m[sentBA..<min(message.count, sentBA + piece + 13)]),
                                  UnsafeRawBufferPointer(start: nil, count: 0))
            }
            buffer.withUnsafeMutableBytes { p in
                let want = [3001, 1, 100, 2048][step % 4]
                gotAB += p[0..<b.read(into: p.baseAddress!, count: want)]
                gotBA += p[0..<a.read(into: p.baseAddress!, count: want / 2 + 1)]
            }
            XCTAssertLessThan(step, 100_000, "no progress")
            if step > 100_000 { break }
        }
        XCTAssertEqual(gotAB, message)
        XCTAssertEqual(gotBA, message)
        // Fill the ring: it takes exactly its size, then nothing.
        let block = [UInt8](repeating: 7, count: 5000)
        let taken = block.withUnsafeBytes { a.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }
        XCTAssertEqual(taken, 4096)
        XCTAssertEqual(block.withUnsafeBytes { a.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }, 0)
        XCTAssertEqual(buffer.withUnsafeMutableBytes { b.read(into: $0.baseAddress!, count: 3001) }, 3001)
        XCTAssertEqual(buffer.withUnsafeMutableBytes { b.read(into: $0.baseAddress!, count: 3001) }, 1095)
        XCTAssertEqual(buffer.withUnsafeMutableBytes { b.read(into: $0.baseAddress!, count: 3001) }, 0)
    }

    /// Cached and non-temporal stores (and the adaptive choice between them) carry the same bytes: long
    /// writes at every alignment of the ring, wrapping, read back in pieces of other sizes.
    func testEveryKindOfStoreCarriesTheSameBytes() throws {
        let message = (0..<700_003).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 11) }
        for stores in LaneStores.allCases {
            let (a, b) = try makePair(ringBytes: 64 << 10)
            a.stores = stores; b.stores = stores
            var sent = 0, got = [UInt8](), step = 0
            var buffer = [UInt8](repeating: 0, count: 70_000)
            while got.count < message.count {
                step += 1
                message.withUnsafeBytes { m in
                    let piece = [5, 17_000, 40_001, 4097, 65_536, 33][step % 6], header = min(24, message.count - sent)
                    sent += a.write(UnsafeRawBufferPointer(rebasing: m[sent..<(sent + header)]),
                                    UnsafeRawBufferPointer(rebasing: m[(sent + header)..<min(message.count, sent + header + piece)]))
                }
                buffer.withUnsafeMutableBytes { p in got += p[0..<b.read(into: p.baseAddress!, count: [30_000, 7, 70_000][step % 3])] }
                if step > 100_000 { return XCTFail("\(stores): no progress") }
            }
            XCTAssertEqual(got, message, "\(stores)")
        }
    }

    /// Under `adaptive` the writer times its long writes with each kind of store and the reader times
    /// reading them back and publishes that in the ring's control block, so the writer's choice sees both.
    func testAdaptiveStoresMeasureBothKindsOnBothSides() throws {
        let (a, b) = try makePair(ringBytes: 1 << 20)
        let block = [UInt8](repeating: 3, count: 64 << 10)
        var sink = [UInt8](repeating: 0, count: 64 << 10)
        for _ in 0..<8 {
            XCTAssertEqual(block.withUnsafeBytes { a.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }, block.count)
            XCTAssertEqual(sink.withUnsafeMutableBytes { b.read(into: $0.baseAddress!, count: $0.count) }, block.count)
        }
        let costs = a.measuredCosts
        for (what, cost) in [("write cached", costs.write.cached), ("write streaming", costs.write.streaming),
                             ("peer read cached", costs.peerRead.cached), ("peer read streaming", costs.peerRead.streaming)] {
            XCTAssertGreaterThan(cost, 0, "\(what): \(costs)")
        }
        XCTAssertEqual(sink, block)
        // Short writes are not timed, and a side told which stores to use measures nothing.
        let (c, d) = try makePair(ringBytes: 1 << 20)
        c.stores = .cached; d.stores = .cached
        _ = block.withUnsafeBytes { c.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }
        _ = sink.withUnsafeMutableBytes { d.read(into: $0.baseAddress!, count: $0.count) }
        XCTAssertEqual(c.measuredCosts.write.cached, 0)
        XCTAssertEqual(c.measuredCosts.peerRead.cached, 0)
    }

    /// The sleep protocol: a side may sleep only when its ring is really empty (or full); the writer
    /// (reader) that makes it ready sees the announcement exactly once, so it rings exactly one doorbell.
    func testASleeperIsSeenOnceAndNeverSleepsOnReadyBytes() throws {
        let (a, b) = try makePair()
        var byte: UInt8 = 1
        XCTAssertTrue(b.prepareToSleep(sending: false, receiving: true), "empty ring: may sleep")
        XCTAssertEqual(withUnsafeBytes(of: &byte) { a.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }, 1)
        XCTAssertTrue(a.peerAwaitsData(), "the writer sees the sleeper")
        XCTAssertFalse(a.peerAwaitsData(), "and only once")
        XCTAssertFalse(b.prepareToSleep(sending: false, receiving: true), "a byte is waiting: no sleep")
        XCTAssertFalse(a.peerAwaitsData(), "a withdrawn announcement is not seen")
        // Room: fill a's outgoing ring, a announces, b's read frees room and sees it.
        let block = [UInt8](repeating: 7, count: 4095)
        XCTAssertEqual(block.withUnsafeBytes { a.write($0, UnsafeRawBufferPointer(start: nil, count: 0)) }, 4095)
        XCTAssertTrue(a.prepareToSleep(sending: true, receiving: false), "full ring: may sleep")
        var sink = [UInt8](repeating: 0, count: 10)
        XCTAssertEqual(sink.withUnsafeMutableBytes { b.read(into: $0.baseAddress!, count: 10) }, 10)
        XCTAssertTrue(b.peerAwaitsRoom())
        XCTAssertFalse(b.peerAwaitsRoom())
        XCTAssertFalse(a.prepareToSleep(sending: true, receiving: false), "room again: no sleep")
    }

    /// What the planner counts per lane (SharedMemoryLane.segmentBytes) is what mapping one costs a
    /// process: the mapping is populated, so all of it is resident at once.
    func testALaneCostsItsSegmentInResidentMemory() throws {
        func residentKiB() -> Int {
            let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1
        }
        // A first, small lane pays for what creating any lane loads once (code pages), not per lane.
        let (first, firstName) = try SharedMemoryLane.create(ringBytes: 4096)
        shm_unlink(firstName)
        let ring = 4 << 20, before = residentKiB()
        let (lane, name) = try SharedMemoryLane.create(ringBytes: ring)
        shm_unlink(name)
        _ = first
        let grown = (residentKiB() - before) * 1024, segment = SharedMemoryLane.segmentBytes(ringBytes: ring)
        XCTAssertGreaterThanOrEqual(grown, segment - (64 << 10), "resident growth \(grown) for a \(segment)-byte segment")
        XCTAssertLessThanOrEqual(grown, segment + (512 << 10), "resident growth \(grown) for a \(segment)-byte segment")
        _ = lane
    }

    /// Only our own segments are opened: a foreign name, a wrong size or a missing segment is refused
    /// with a reason (and the pair then stays on TCP).
    func testForeignOrMismatchedSegmentsAreRefused() throws {
        XCTAssertThrowsError(try SharedMemoryLane.open(name: "/etc-passwd", ringBytes: 4096))
        XCTAssertThrowsError(try SharedMemoryLane.open(name: "/swift-ddp-../x", ringBytes: 4096))
        XCTAssertThrowsError(try SharedMemoryLane.open(name: "/swift-ddp-nosuchsegment", ringBytes: 4096)) { error in
            XCTAssertTrue("\(error)".contains("No such file"), "\(error)")
        }
        let (lane, name) = try SharedMemoryLane.create(ringBytes: 8192)
        defer { shm_unlink(name) }
        XCTAssertThrowsError(try SharedMemoryLane.open(name: name, ringBytes: 4096)) { error in
            XCTAssertTrue("\(error)".contains("is not"), "\(error)")
        }
        XCTAssertNoThrow(try SharedMemoryLane.open(name: name, ringBytes: 8192))
        _ = lane
    }
}
