import Collectives
import XCTest

/// The pure schedules, without sockets.
final class ScheduleTests: XCTestCase {
    func testSegmentsPartitionAnyCount() {
        for parts in 1...9 {
            for count in [0, 1, 2, 7, 8, 9, 1000, 1_048_579] {
                var next = 0
                for i in 0..<parts {
                    let r = segmentRange(count: count, parts: parts, index: i)
                    XCTAssertEqual(r.lowerBound, next)
                    XCTAssertLessThanOrEqual(r.count, count / parts + 1)
                    next = r.upperBound
                }
                XCTAssertEqual(next, count)
            }
        }
    }

    func testRingScheduleMovesEverySegmentOnceAndEndsWithOwnership() {
        for n in 2...8 {
            for rank in 0..<n {
                // What rank sends at step s is what its right neighbour receives at step s.
                for s in 0..<(n - 1) {
                    XCTAssertEqual(RingSchedule.reduceScatter(rank: rank, worldSize: n, step: s).send,
                                   RingSchedule.reduceScatter(rank: (rank + 1) % n, worldSize: n, step: s).receive)
                    XCTAssertEqual(RingSchedule.allgather(rank: rank, worldSize: n, step: s).send,
                                   RingSchedule.allgather(rank: (rank + 1) % n, worldSize: n, step: s).receive)
                }
                // The last segment received in reduce-scatter is the rank's own; allgather starts by sending it.
                XCTAssertEqual(RingSchedule.reduceScatter(rank: rank, worldSize: n, step: n - 2).receive, rank)
                XCTAssertEqual(RingSchedule.allgather(rank: rank, worldSize: n, step: 0).send, rank)
                // Allgather receives every other segment exactly once.
                let received = Set((0..<(n - 1)).map { RingSchedule.allgather(rank: rank, worldSize: n, step: $0).receive })
                XCTAssertEqual(received, Set(0..<n).subtracting([rank]))
            }
        }
    }

    func testHalvingDoublingOwnershipPartitionsTheVector() {
        for n in 2...9 {
            let p = HalvingDoublingSchedule.powerOfTwo(below: n)
            XCTAssertTrue(p <= n && p * 2 > n && p & (p - 1) == 0)
            for count in [0, 1, 5, 1000] {
                var owned: [Range<Int>] = []
                for rank in 0..<p {
                    let steps = HalvingDoublingSchedule.steps(rank: rank, worldSize: n, count: count)
                    XCTAssertEqual(steps.count, p.trailingZeroBitCount)
                    for step in steps {
                        // Partners split the same range into the same two halves, swapped.
                        let theirs = HalvingDoublingSchedule.steps(rank: step.partner, worldSize: n, count: count)
                        let match = theirs.first { $0.partner == rank }!
                        XCTAssertEqual(match.keep, step.give)
                        XCTAssertEqual(match.give, step.keep)
                    }
                    owned.append(steps.last?.keep ?? 0..<count)
                }
                XCTAssertEqual(owned.map(\.count).reduce(0, +), count)
                XCTAssertEqual(Set(owned.flatMap { Array($0) }).count, count, "n=\(n) count=\(count): ownership overlaps")
            }
        }
    }

    func testTreeShape() {
        XCTAssertNil(TreeSchedule.parent(of: 0))
        XCTAssertEqual(TreeSchedule.children(of: 0, worldSize: 5), [1, 2])
        XCTAssertEqual(TreeSchedule.children(of: 1, worldSize: 5), [3, 4])
        XCTAssertEqual(TreeSchedule.children(of: 2, worldSize: 5), [])
        for r in 1..<20 { XCTAssertTrue(TreeSchedule.children(of: TreeSchedule.parent(of: r)!, worldSize: 20).contains(r)) }
        XCTAssertEqual((0..<8).map(TreeSchedule.depth), [0, 1, 1, 2, 2, 2, 2, 3])
        for r in 1..<40 { XCTAssertEqual(TreeSchedule.depth(of: r), TreeSchedule.depth(of: TreeSchedule.parent(of: r)!) + 1) }
    }
}
