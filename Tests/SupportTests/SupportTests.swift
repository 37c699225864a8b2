import Support
import XCTest

final class JSONTests: XCTestCase {
    func testParsesEveryKindAndWritesItBackSorted() throws {
        let text = #"  {"b": [1, -2.5e3, true, false, null], "a": {"x": "y"}, "c": 0.1}  "#
        let value = try JSONValue.parse(text)
        XCTAssertEqual(value["a"]?["x"]?.stringValue, "y")
        XCTAssertEqual(value["b"]?.arrayValue?.count, 5)
        XCTAssertEqual(value["b"]?.arrayValue?[1].doubleValue, -2500)
        XCTAssertEqual(value["c"]?.doubleValue, 0.1)
        XCTAssertEqual(value.serialized(), #"{"a":{"x":"y"},"b":[1,-2.5e3,true,false,null],"c":0.1}"#)
        XCTAssertEqual(try JSONValue.parse(value.serialized(pretty: true)), value)
    }

    func testNumbersKeepTheirTextSoLargeIntegersSurvive() throws {
        let seed = "18446744073709551615"
        let value = try JSONValue.parse(#"{"seed": \#(seed), "offset": 9007199254740993}"#)
        XCTAssertEqual(value.serialized(), #"{"offset":9007199254740993,"seed":\#(seed)}"#)
        XCTAssertEqual(value["offset"]?.intValue, 9007199254740993)
        XCTAssertNil(JSONValue.number("1e3").intValue, "an exponent is not an exact Int")
        XCTAssertEqual(JSONValue(Double.nan), .null)
        XCTAssertEqual(JSONValue(0.25).serialized(), "0.25")
        XCTAssertEqual(JSONValue(3).serialized(), "3")
    }

    func testStringEscapesRoundTrip() throws {
        let original = "quote \" backslash \\ slash / tab \t newline \n bell \u{7} é 😀"
        let written = JSONValue.string(original).serialized()
        XCTAssertEqual(written, #""quote \" backslash \\ slash / tab \t newline \n bell \u0007 é 😀""#)
        XCTAssertEqual(try JSONValue.parse(written).stringValue, original)
        // Foundation's writer escapes the slash and non-ASCII; both must read back.
        XCTAssertEqual(try JSONValue.parse(#""a\/b \u00e9 \ud83d\ude00""#).stringValue, "a/b é 😀")
    }

    func testRefusesWhatIsNotJSONSayingWhere() {
        let cases: [(String, String)] = [
            (#"{"a": 1,}"#, "expected a key"), ("[1 2]", "expected ',' or ']'"), ("01", "unexpected text after"),
            ("1.", "no digits after the point"), ("-", "invalid number"), ("1e+", "no digits in the exponent"),
            ("tru", "invalid literal"), (#""abc"#, "unterminated string"), ("\"a\u{1}b\"", "control character"),
            (#""\x""#, "invalid escape"), (#""\ud800""#, "unpaired surrogate"), (#""\udc00x""#, "unpaired surrogate"),
            ("{} {}", "unexpected text after"), ("", "unexpected end"), ("{\n  \"a\": ?}", "line 2, column 8"),
        ]
        for (text, expected) in cases {
            XCTAssertThrowsError(try JSONValue.parse(text), text) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(text): \(error)")
            }
        }
        XCTAssertThrowsError(try JSONValue.parse([0x22, 0xFF, 0x22])) { XCTAssertTrue("\($0)".contains("not valid UTF-8")) }
    }

    func testADuplicateKeyIsNamed() {
        XCTAssertThrowsError(try JSONValue.parse(#"{"lr": 1, "x": {"y": 2}, "lr": 3}"#)) { error in
            XCTAssertEqual((error as? JSONError)?.duplicateKey, "lr")
        }
        XCTAssertThrowsError(try JSONValue.parse(#"[{"k": 1, "k": 1}]"#)) { XCTAssertEqual(($0 as? JSONError)?.duplicateKey, "k") }
    }

    func testNestingIsBounded() throws {
        let ok = String(repeating: "[", count: JSONValue.maxDepth) + String(repeating: "]", count: JSONValue.maxDepth)
        XCTAssertNoThrow(try JSONValue.parse(ok))
        let deep = String(repeating: "[", count: 100_000)
        XCTAssertThrowsError(try JSONValue.parse(deep)) { XCTAssertTrue("\($0)".contains("nested deeper")) }
    }
}

final class TextTests: XCTestCase {
    func testFormatMatchesPrintf() {
        XCTAssertEqual(format("%.2f ms, %d%%, %05d, %.3e, %02x", 1.005, 42, 7, 12345.678, 10), "1.00 ms, 42%, 00007, 1.235e+04, 0a")
        XCTAssertEqual(format("%@ x %d = %.1f%@ (%@)", "two", 3, 6.0, "!", 1.5), "two x 3 = 6.0! (1.5)")
        XCTAssertEqual(format("%d %d", 1), "1 (missing)")
        XCTAssertEqual(format("%d %5d %x %u", Int.max, -3, UInt64(1) << 40, UInt.max), "9223372036854775807    -3 10000000000 18446744073709551615")
        XCTAssertEqual(format("%ld %d", 5_000_000_000, Int32(-7)), "5000000000 -7")
        let long = format("%0300d", 1)
        XCTAssertEqual(long.count, 300)
        XCTAssertTrue(long.hasSuffix("01") && long.hasPrefix("000"))
    }

    func testTrimPadAndParent() {
        XCTAssertEqual("  a b \n\t".trimmed, "a b")
        XCTAssertEqual(" \n ".trimmed, "")
        XCTAssertEqual("ab".padded(to: 4), "ab  ")
        XCTAssertEqual("abcdef".padded(to: 3), "abc")
        let parents = ["a/b/c": "a/b", "a": "", "/a": "/", "/": "/", "a/b/": "a", "a//b": "a", "": "", "/a/b": "/a"]
        for (path, parent) in parents { XCTAssertEqual(parentDirectory(path), parent, path) }
    }
}

final class LockTests: XCTestCase {
    func testThreadsUnderTheLockAndAConditionWake() {
        final class Shared: @unchecked Sendable { var count = 0; var finished = 0 }
        let shared = Shared(), lock = Lock(), condition = Condition()
        for t in 0..<4 {
            startThread(name: "support-test-\(t)") {
                for _ in 0..<10_000 { lock.withLock { shared.count += 1 } }
                condition.lock(); shared.finished += 1; condition.broadcast(); condition.unlock()
            }
        }
        condition.lock()
        while shared.finished < 4 { XCTAssertTrue(condition.wait(seconds: 30) || shared.finished == 4, "threads did not finish") }
        condition.unlock()
        XCTAssertEqual(lock.withLock { shared.count }, 40_000)
    }

    func testATimedWaitTimesOut() {
        let condition = Condition()
        condition.lock()
        var start = timespec(), end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        XCTAssertFalse(condition.wait(seconds: 0.05))
        clock_gettime(CLOCK_MONOTONIC, &end)
        condition.unlock()
        XCTAssertGreaterThanOrEqual(Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9, 0.049)
    }
}

final class BuildCPUTests: XCTestCase {
    static let cpuinfo = """
        processor\t: 0
        vendor_id\t: AuthenticAMD
        model name\t: AMD EPYC 7B12
        flags\t\t: fpu sse sse2 avx avx2 fma

        processor\t: 1
        model name\t: another
        flags\t\t: fpu

        """

    /// The first CPU's model name and flags, keys padded with tabs as the kernel writes them.
    func testParsesTheFirstCPUsModelAndFlags() {
        let info = CPUInfo(parsing: Self.cpuinfo)
        XCTAssertEqual(info.modelName, "AMD EPYC 7B12")
        XCTAssertEqual(info.flags, ["fpu", "sse", "sse2", "avx", "avx2", "fma"])
        XCTAssertEqual(CPUInfo(parsing: ""), CPUInfo(parsing: "garbage without colons"))
        XCTAssertEqual(CPUInfo(parsing: "").modelName, "unknown")
    }

    /// A CPU without an instruction set the build uses is refused with the missing flags, the model, the
    /// host and what to do; one with all of them (this machine, for a native build) and an unreadable
    /// cpuinfo (no flags: nothing to judge by) are not.
    func testRefusesACPUThatLacksWhatTheBuildUses() throws {
        let required = BuildCPU.requiredFlags
        XCTAssertFalse(BuildCPU.target.isEmpty)
        XCTAssertNoThrow(try BuildCPU.requireRunnable(on: CPUInfo(parsing: "flags : " + required.joined(separator: " "))))
        XCTAssertNoThrow(try BuildCPU.requireRunnable(on: CPUInfo(parsing: "")))
        if BuildCPU.target == "native" { XCTAssertNoThrow(try BuildCPU.requireRunnable(on: CPUInfo.read())) }
        guard !required.isEmpty else { return }  // a build for baseline x86-64 runs anywhere
        XCTAssertThrowsError(try BuildCPU.requireRunnable(on: CPUInfo(parsing: "model name : Old\nflags : fpu " + required.dropFirst().joined(separator: " ")))) { error in
            guard let mismatch = error as? BuildCPUMismatch else { return XCTFail("\(error)") }
            XCTAssertEqual(mismatch.missing, [required[0]])
            XCTAssertEqual(mismatch.modelName, "Old")
            XCTAssertTrue(mismatch.description.contains("lacks: \(required[0]). Rebuild on this host"), mismatch.description)
            XCTAssertTrue(mismatch.description.contains("SWIFT_DDP_TARGET_CPU"), mismatch.description)
        }
    }
}
