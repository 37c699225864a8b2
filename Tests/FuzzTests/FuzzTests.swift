import FuzzTargets
import Foundation
import NN
import XCTest

/// The fuzz targets as tests: every input that once crashed a parser (fuzz/regressions, named
/// TARGET-what) and a bounded seeded run over each corpus must end without a crash.
final class FuzzTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    func testEveryRegressionInputIsRefusedWithoutACrash() throws {
        let directory = Self.root + "/fuzz/regressions"
        let names = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        XCTAssertFalse(names.isEmpty)
        for name in names {
            let target = try XCTUnwrap(FuzzTarget.allCases.first { name.hasPrefix($0.rawValue + "-") }, "\(name): no target prefix")
            let input = try XCTUnwrap(FileManager.default.contents(atPath: directory + "/" + name))
            target.run(Array(input))
        }
        // The first crash fuzzing found: a checkpoint header length of 2^63 or more trapped converting to Int.
        let crash = try Data(contentsOf: URL(fileURLWithPath: directory + "/checkpoint-header-length-over-2e63"))
        XCTAssertThrowsError(try LoadedCheckpoint(data: crash, path: "crash")) { error in
            XCTAssertTrue("\(error)".contains("header length"), "\(error)")
        }
    }

    func testSeededMutationsOfEveryCorpusDoNotCrash() {
        for target in FuzzTarget.allCases {
            var corpus = loadCorpus(Self.root + "/fuzz/corpus/" + target.rawValue)
            if corpus.isEmpty { corpus = seedInputs(target, configsDirectory: Self.root + "/configs") }
            XCTAssertFalse(corpus.isEmpty, "\(target): no seeds")
            let runs = runSeeded(target, corpus: corpus, seed: 2026, executions: 20_000, seconds: 1.5)
            XCTAssertGreaterThan(runs, corpus.count, "\(target): no mutations ran")
        }
    }
}
