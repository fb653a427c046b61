"""Leak and memory-error check of the fast path under valgrind memcheck.

    PYTHONMALLOC=malloc valgrind --leak-check=full --show-leak-kinds=definite \
        "$(python -c 'import sys; print(sys.executable)')" fuzz/leak_check.py

Adds, uses (encap + decap, serial and threads=2) and deletes SAs of six suite families twenty
times, then closes the Offload. Expect no "definitely lost" record and no invalid access whose
stack names natt/_fastpath or libcrypto (CPython and numpy report a few of their own at start-up).
"""
import natt
nic = natt.Offload()
key = bytes(range(36))
inner = bytes.fromhex("4500001c000100004011000a0a0000010a000002") + bytes(8)
for r in range(20):
    hs = []
    for i, suite in enumerate(["aes128gcm16", "aes128-sha1", "chacha20poly1305", "aes256-sha512", "3des-md5", "aes128gmac"]):
        s = natt.parse_suite(suite)[0]
        k = key[:s.key_len] if s.key_len <= 36 else bytes(s.key_len)
        tx = nic.add_sa(0x100 + i, k, suite, "out", src="1.1.1.1", dst="2.2.2.2")
        rx = nic.add_sa(0x100 + i, k, suite, "in", src="1.1.1.1", dst="2.2.2.2")
        w = nic.encap([inner] * 4, tx, threads=2 if r % 2 else None)
        res = nic.decap(w.batch(), threads=2 if r % 2 else None)
        assert (res.status == 0).all()
        hs += [tx, rx]
    for h in hs:
        nic.delete_sa(h)
nic.close()
print("done")
