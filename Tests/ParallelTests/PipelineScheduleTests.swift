import Foundation
import Parallel
import XCTest

/// Pipeline schedules are pure values: checked against lists derived by hand from the papers, against
/// the bubble formulas in the simulator, and against golden tables for p ∈ {2, 4}, m ∈ {p, 2p, 4p}.
final class PipelineScheduleTests: XCTestCase {
    func compute(_ s: PipelineSchedule, rank: Int) -> [String] {
        s.actions[rank].filter { $0.kind.isCompute && $0.kind != .step }.map(\.description)
    }

    func testListsDerivedByHandFromThePapers() throws {
        // GPipe: all forwards, then all backwards.
        let gpipe = try PipelineSchedule(.gpipe, pipelineParallel: 2, microbatches: 2)
        XCTAssertEqual(gpipe.actions[0].map(\.description), ["0F0", "0SEND_F0", "0F1", "0SEND_F1", "0RECV_B0", "0B0", "0RECV_B1", "0B1", "STEP"])
        XCTAssertEqual(gpipe.actions[1].map(\.description), ["1RECV_F0", "1F0", "1RECV_F1", "1F1", "1B0", "1SEND_B0", "1B1", "1SEND_B1", "STEP"])
        // PipeDream-Flush: rank 0 of 2 warms up with one forward; the last rank alternates at once.
        let one = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 4)
        XCTAssertEqual(compute(one, rank: 0), ["0F0", "0F1", "0B0", "0F2", "0B1", "0F3", "0B2", "0B3"])
        XCTAssertEqual(compute(one, rank: 1), ["1F0", "1B0", "1F1", "1B1", "1F2", "1B2", "1F3", "1B3"])
        // Megatron interleaved, p 2, v 2, m 4: rank 0 warms up with (p−1)·2 + (v−1)·p = 4 forwards
        // (chunk 0 on micro-batches 0, 1, then chunk 1 = stage 2 on 0, 1), then F 0F2 / B 2B0 pairs.
        let inter = try PipelineSchedule(.interleaved, pipelineParallel: 2, microbatches: 4, virtualStages: 2)
        XCTAssertEqual(Array(compute(inter, rank: 0).prefix(8)), ["0F0", "0F1", "2F0", "2F1", "0F2", "2B0", "0F3", "2B1"])
        XCTAssertEqual(inter.stages(ofRank: 0), [0, 2])
        // ZB-H1, p 2: the last stage runs F and I back to back and fills what would be waiting with W,
        // one micro-batch behind; the first stage's order is 1F1B's with B = I + W.
        let zb = try PipelineSchedule(.zeroBubbleH1, pipelineParallel: 2, microbatches: 4)
        XCTAssertEqual(compute(zb, rank: 0), ["0F0", "0F1", "0I0", "0W0", "0F2", "0I1", "0W1", "0F3", "0I2", "0W2", "0I3", "0W3"])
        XCTAssertEqual(compute(zb, rank: 1), ["1F0", "1I0", "1F1", "1I1", "1W0", "1F2", "1I2", "1W1", "1F3", "1I3", "1W2", "1W3"])
    }

    /// Every schedule of the matrix is complete and deadlock-free; at free communication its simulated
    /// bubble equals the formula, and its peak of live activations is the schedule's known bound.
    func testEveryScheduleMeetsItsBubbleFormulaAndActivationBound() throws {
        for kind in PipelineScheduleKind.allCases {
            for p in [1, 2, 4] {
                for m in [p, 2 * p, 4 * p] {
                    let v = kind == .interleaved ? 2 : 1
                    let s = try PipelineSchedule(kind, pipelineParallel: p, microbatches: m, virtualStages: v)
                    let sim = try PipelineSimulator.run(s, costs: .uniform(stages: s.stageCount))
                    let what = "\(kind.rawValue) p \(p) m \(m) v \(v)"
                    XCTAssertEqual(sim.bubble, s.formulaBubble, accuracy: 1e-9, what)
                    // Each rank computes F + I + W = 3 per stage and micro-batch: the step is that plus the bubble.
                    XCTAssertEqual(sim.busy, Array(repeating: Double(3 * m * v), count: p), what)
                    let expected: [Int]
                    switch kind {
                    case .gpipe: expected = Array(repeating: m, count: p)
                    case .oneFOneB: expected = (0..<p).map { p - $0 }
                    case .zeroBubbleH1: expected = Array(repeating: p, count: p) // 1F1B's peak (rank 0's), on every rank
                    case .interleaved: expected = (0..<p).map { r in m == p ? m * v : (p - r - 1) * 2 + (v - 1) * p + 1 }
                    }
                    XCTAssertEqual(sim.peakLiveActivations, expected, what)
                    // Communication that costs something delays the step but never deadlocks it.
                    let slow = try PipelineSimulator.run(s, costs: .uniform(stages: s.stageCount, transfer: 0.4))
                    XCTAssertGreaterThanOrEqual(slow.stepTime, sim.stepTime, what)
                    if p > 1 { XCTAssertGreaterThan(slow.stepTime, sim.stepTime, what) }
                }
            }
        }
    }

    func testZeroBubbleIsTheFastestAtFewMicrobatches() throws {
        for p in [2, 4] {
            for m in [p, 2 * p] {
                func step(_ kind: PipelineScheduleKind, v: Int = 1) throws -> Double {
                    let s = try PipelineSchedule(kind, pipelineParallel: p, microbatches: m, virtualStages: v)
                    return try PipelineSimulator.run(s, costs: .uniform(stages: s.stageCount, forward: 1.0 / Double(v), backwardInput: 1.0 / Double(v), backwardWeight: 1.0 / Double(v), transfer: 0.05)).stepTime
                }
                let zb = try step(.zeroBubbleH1)
                XCTAssertLessThan(zb, try step(.oneFOneB), "p \(p) m \(m)")
                XCTAssertLessThan(zb, try step(.gpipe), "p \(p) m \(m)")
            }
        }
    }

    func testGoldenTables() throws {
        var text = ""
        for kind in PipelineScheduleKind.allCases {
            for p in [2, 4] {
                for m in [p, 2 * p, 4 * p] {
                    for v in kind == .interleaved ? [2] : [1] {
                        let s = try PipelineSchedule(kind, pipelineParallel: p, microbatches: m, virtualStages: v)
                        text += "# \(kind.rawValue) p=\(p) m=\(m) v=\(v)\n\(s.table)\n\n"
                    }
                }
            }
        }
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/pipeline-schedules.txt").path
        if ProcessInfo.processInfo.environment["SWIFT_DDP_UPDATE_GOLDEN"] == "1" {
            try text.write(toFile: path, atomically: true, encoding: .utf8)
        }
        let golden = try String(contentsOfFile: path, encoding: .utf8)
        let got = text.split(separator: "\n", omittingEmptySubsequences: false), want = golden.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(got.count, want.count, "regenerate with SWIFT_DDP_UPDATE_GOLDEN=1 after a deliberate change")
        for (i, (a, b)) in zip(got, want).enumerated() where a != b {
            XCTFail("line \(i + 1) differs from \(path):\n got  \(a)\n want \(b)"); break
        }
    }

    func testSimulatorRejectsBrokenSchedules() throws {
        let good = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 2)
        func altered(_ rank: Int, _ change: (inout [PipelineAction]) -> Void) -> PipelineSchedule {
            var lists = good.actions
            change(&lists[rank])
            return PipelineSchedule(kind: good.kind, pipelineParallel: 2, microbatches: 2, virtualStages: 1, actions: lists)
        }
        func refusal(_ s: PipelineSchedule) -> String {
            do { _ = try PipelineSimulator.run(s, costs: .uniform(stages: 2)); return "accepted" } catch { return "\(error)" }
        }
        // Rank 0 waits for micro-batch 0's gradient before sending micro-batch 1, while rank 1 waits
        // for micro-batch 1 before its first backward: each waits on the other.
        let deadlock = PipelineSchedule(kind: .oneFOneB, pipelineParallel: 2, microbatches: 2, virtualStages: 1, actions: [
            ["0F0", "0SEND_F0", "0RECV_B0", "0B0", "0F1", "0SEND_F1", "0RECV_B1", "0B1", "STEP"].compactMap(PipelineAction.init),
            ["1RECV_F0", "1F0", "1RECV_F1", "1F1", "1B0", "1SEND_B0", "1B1", "1SEND_B1", "STEP"].compactMap(PipelineAction.init),
        ])
        let text = refusal(deadlock)
        XCTAssertTrue(text.contains("pipeline_schedule") && text.contains("deadlock") && text.contains("rank 0 waits at 0RECV_B0")
                      && text.contains("rank 1 waits at 1RECV_F1"), text)
        // Messages between two ranks must be received in the order they were sent.
        let crossed = altered(1) { list in
            let a = list.firstIndex { $0.description == "1RECV_F0" }!, b = list.firstIndex { $0.description == "1RECV_F1" }!
            list.swapAt(a, b)
        }
        XCTAssertTrue(refusal(crossed).contains("messages would cross"), refusal(crossed))
        XCTAssertTrue(refusal(altered(0) { $0.removeAll { $0.description == "0B0" }; $0.insert(PipelineAction(0, .backward, 0), at: 0) })
            .contains("rank 0 runs 0B0 before 0F0"))
        XCTAssertTrue(refusal(altered(0) { $0.swapAt(0, 1) }).contains("rank 0 runs 0SEND_F0 before 0F0"))
        XCTAssertTrue(refusal(altered(1) { $0.removeAll { $0.description == "1B1" } }).contains("needs one B, or one I and one W"))
        XCTAssertTrue(refusal(altered(1) { $0.insert(PipelineAction(0, .forward, 1), at: 0) }).contains("lives on rank 0"))
        XCTAssertTrue(refusal(altered(0) { $0.removeAll { $0.description == "0SEND_F1" } }).contains("1RECV_F1 has no matching 0SEND_F1"))
        XCTAssertTrue(refusal(altered(0) { $0.removeLast() }).contains("STEP"))
        XCTAssertEqual(refusal(good), "accepted")
    }

    func testRefusalsNameTheKey() throws {
        func key(_ body: () throws -> Void) -> String? {
            do { try body(); return nil } catch let e as LayoutError { return e.key } catch { return "\(error)" }
        }
        XCTAssertEqual(key { _ = try PipelineSchedule(.oneFOneB, pipelineParallel: 4, microbatches: 3) }, "microbatches")
        XCTAssertEqual(key { _ = try PipelineSchedule(.zeroBubbleH1, pipelineParallel: 4, microbatches: 2) }, "microbatches")
        XCTAssertNil(key { _ = try PipelineSchedule(.gpipe, pipelineParallel: 4, microbatches: 2) })
        XCTAssertEqual(key { _ = try PipelineSchedule(.oneFOneB, pipelineParallel: 2, microbatches: 4, virtualStages: 2) }, "virtual_stages")
        XCTAssertEqual(key { _ = try PipelineSchedule(.interleaved, pipelineParallel: 2, microbatches: 4, virtualStages: 1) }, "virtual_stages")
        XCTAssertEqual(key { _ = try PipelineSchedule(.interleaved, pipelineParallel: 4, microbatches: 6, virtualStages: 2) }, "microbatches")
        XCTAssertEqual(key { _ = try PipelineSchedule(.gpipe, pipelineParallel: 0, microbatches: 4) }, "pipeline_parallel")
        // Megatron's example: 16 layers, p 4, v 2: rank 0 holds stages 0 and 4, layers 1–2 and 9–10.
        let s = try PipelineSchedule(.interleaved, pipelineParallel: 4, microbatches: 8, virtualStages: 2)
        let ranges = try s.layerRanges(layers: 16)
        XCTAssertEqual(s.stages(ofRank: 0).map { ranges[$0] }, [0..<2, 8..<10])
        XCTAssertEqual(key { _ = try s.layerRanges(layers: 12) }, "n_layer")
    }

    func testActionNotation() {
        for text in ["2F0", "0B3", "1I2", "1W2", "10SEND_B12", "3RECV_F0", "0SEND_F1", "1RECV_B1", "STEP"] {
            XCTAssertEqual(PipelineAction(text)?.description, text)
        }
        XCTAssertEqual(PipelineAction("10SEND_B12"), PipelineAction(10, .sendGradient, 12))
        for bad in ["", "F0", "2F", "2X0", "2STEP0", "-1F0", "2F0x"] { XCTAssertNil(PipelineAction(bad), bad) }
    }

    func testTimelineDrawsEveryInterval() throws {
        let s = try PipelineSchedule(.zeroBubbleH1, pipelineParallel: 4, microbatches: 8)
        let sim = try PipelineSimulator.run(s, costs: .uniform(stages: 4, transfer: 0.2))
        let svg = pipelineTimelineSVG(sim.intervals, title: "zb-h1 <p 4>")
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.hasSuffix("</svg>\n"))
        XCTAssertEqual(svg.components(separatedBy: "<title>").count - 1, sim.intervals.map(\.count).reduce(0, +))
        XCTAssertTrue(svg.contains("zb-h1 &lt;p 4&gt;"))
        XCTAssertTrue(sim.intervals.flatMap { $0 }.contains { $0.action.kind.isReceive }, "waits are drawn when transfers cost time")
        for rank in 0..<4 { XCTAssertTrue(svg.contains(">rank \(rank)<")) }
    }
}
