import Foundation

// PROVISIONAL (replaced by the kernel branch): a minimal kernel to test the node side with.
enum CodeKernel {
    static let languages = ["python", "bash"]
    static let maxLineBytes = 64 << 20
    static func argv(language: String) -> [String] { ["python3", "-u", "-I", "-c", source, language] }
    static func request(id: String, code: String) -> Data {
        var data = try! JSONEncoder().encode(["type": "run", "id": id, "code": code])
        data.append(UInt8(ascii: "\n"))
        return data
    }
    static let source = #"""
        import sys, os, json, ast, traceback, io, time
        out = os.fdopen(os.dup(1), "w")
        def send(o):
            out.write(json.dumps(o) + "\n"); out.flush()
        send({"type": "ready", "language": sys.argv[1], "pid": os.getpid()})
        ns = {"__name__": "__main__"}
        count = 0
        for line in sys.stdin:
            req = json.loads(line)
            count += 1
            cid = req["id"]
            buf = io.StringIO()
            old = sys.stdout
            sys.stdout = buf
            try:
                tree = ast.parse(req["code"])
                last = None
                if tree.body and isinstance(tree.body[-1], ast.Expr):
                    last = ast.Expression(tree.body.pop().value)
                exec(compile(tree, "<cell>", "exec"), ns)
                value = eval(compile(last, "<cell>", "eval"), ns) if last else None
                sys.stdout = old
                if buf.getvalue(): send({"type": "stream", "id": cid, "name": "stdout", "text": buf.getvalue(), "t": int(time.time()*1000)})
                if value is not None: send({"type": "result", "id": cid, "main": True, "data": {"text/plain": repr(value)}})
            except BaseException as e:
                sys.stdout = old
                if buf.getvalue(): send({"type": "stream", "id": cid, "name": "stdout", "text": buf.getvalue(), "t": int(time.time()*1000)})
                send({"type": "error", "id": cid, "name": type(e).__name__, "value": str(e), "traceback": traceback.format_exc()})
            send({"type": "done", "id": cid, "execution_count": count})
        """#
}
