import Collectives
import Foundation
import Rendezvous
import Transport
import XCTest

/// Every algorithm x world size x length on real processes over loopback, checked against exact
/// references and for bitwise-identical results on every rank.
final class CollectiveProcessTests: XCTestCase {
    func testAllAlgorithmsAndCollectivesOnWorldSizes1To5And8() throws {
        for world in [1, 2, 3, 4, 5, 8] {
            // The 2^20 + 3 length on 8 oversubscribed ranks is the slow corner: keep it, but for allreduce only.
            try runCollectiveCheck(worldSize: world, arguments: ["--counts", "0,1,7,1000"])
            // 3 x 2^16 + 1 on 3 ranks gives a segment one element past whole ring pieces, next to two that
            // end on a piece: the ring's fused last step must still carry that element.
            try runCollectiveCheck(worldSize: world, arguments: ["--counts", "1048579,196609", "--allreduce-only"])
        }
    }
}

/// bf16 gradient compression: exact where bf16 is exact, bitwise identical everywhere.
final class CompressedCollectiveTests: XCTestCase {
    func testBFloat16RoundsToNearestEven() {
        XCTAssertEqual(bfloat16Bits(1.0), 0x3F80)
        XCTAssertEqual(bfloat16Bits(-2.0), 0xC000)
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        XCTAssertEqual(bfloat16Bits(1 + 1.0 / 256), 0x3F80)
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: up to the even one.
        XCTAssertEqual(bfloat16Bits(1 + 3.0 / 256), 0x3F82)
        XCTAssertEqual(bfloat16Bits(1 + 1.0 / 256 + 1.0 / 4096), 0x3F81, "above the tie rounds up")
        XCTAssertEqual(bfloat16Bits(.infinity), 0x7F80)
        XCTAssertTrue(floatFromBFloat16(bfloat16Bits(.nan)).isNaN)
        XCTAssertEqual(floatFromBFloat16(bfloat16Bits(Float.greatestFiniteMagnitude)), .infinity, "overflow rounds to infinity")
        // The SIMD encoder agrees with the scalar one on awkward values, and widening is exact.
        var values: [Float] = [0, -0.0, Float.leastNormalMagnitude / 1000, 3.14159, -65504, .nan, .infinity, 1 + 1.0 / 256]
        for i in 0..<41 { values.append(Float(i) * 0.37 - 7) }
        var buffer = values
        buffer.withUnsafeMutableBufferPointer { roundToBFloat16($0) }
        for (x, r) in zip(values, buffer) {
            if x.isNaN { XCTAssertTrue(r.isNaN); continue }
            if x.isInfinite { XCTAssertEqual(r, x); continue }
            XCTAssertEqual(r, floatFromBFloat16(bfloat16Bits(x)))
            XCTAssertLessThanOrEqual(abs(r - x), abs(x) / 256 + 1e-38, "\(x)")
        }
    }

    func testCompressedRingAllreduceAndReduceScatter() throws {
        for world in [2, 3, 4] {
            let cluster = try LocalCluster(worldSize: world)
            let outcomes = try cluster.start("collective-check", ["--compression", "bf16", "--algorithms", "ring",
                                                                  "--counts", "0,1,7,1000,70001"]).wait(timeout: 120).outcomes
            for (rank, outcome) in outcomes.enumerated() {
                XCTAssertEqual(outcome.status, 0, "world \(world) rank \(rank):\n\(outcome.output)")
                XCTAssertTrue(outcome.output.contains("rank \(rank): OK"), outcome.output)
            }
        }
    }
}
