import Foundation
import TestSupport
import Transport
import XCTest

/// Bad launcher options: one clear line, exit code 2, nothing started.
final class LauncherOptionTests: XCTestCase {
    func testBadOptionsGetOneLineAndExitCode2() throws {
        let config = configsDirectory + "/tiny-gpt.json"
        let busy = try Listener(host: "127.0.0.1", port: 0)
        let cases: [(arguments: [String], mentions: String)] = [
            (["--nproc-per-node", "0", "--", config], "--nproc-per-node"),
            (["--nproc-per-node", "two", "--", config], "--nproc-per-node"),
            (["--bogus-flag", "3", "--", config], "bogus-flag"),
            (["--nproc-per-node", "2", "--", "/nonexistent/config.json"], "/nonexistent/config.json"),
            (["--nproc-per-node", "2", "--master-port", String(busy.port), "--", config], "\(busy.port)"),
            (["--nproc-per-node", "2", "--numa-bind", "sockets", "--", config], "--numa-bind"),
            (["--nproc-per-node", "2", "--max-restarts", "-1", "--", config], "--max-restarts"),
            (["--nproc-per-node", "2", "--iface", "no-such-interface0", "--", config], "no-such-interface0"),
            (["--nproc-per-node", "2"], "nothing to launch"),
        ]
        for (arguments, mentions) in cases {
            let (status, output, _) = try runToEnd(DataParallelTests.buildDirectory + "/ddp-launch", arguments)
            let lines = output.split(separator: "\n").filter { !$0.hasPrefix("[launcher] placement") }
            XCTAssertEqual(status, 2, "\(arguments): \(output)")
            XCTAssertEqual(lines.count, 1, "\(arguments) should print one line:\n\(output)")
            XCTAssertTrue(output.contains(mentions), "\(arguments): '\(output)' should mention \(mentions)")
            XCTAssertFalse(output.contains("[rank "), "\(arguments) started ranks:\n\(output)")
        }
    }
}
