"""Digest authentication of INVITEs: the RFC 7616 example, challenges, verdicts and any input."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sip import digest
from sip.digest import Algorithm, DigestAuthority, Verdict

URI = "sip:+5511999990001@192.0.2.10:5060"
SOURCE = "198.51.100.7"


def test_rfc7616_example_responses() -> None:
    # RFC 7616 section 3.9.1: the same request answered with MD5 and with SHA-256.
    args = ("Mufasa", "http-auth@example.org", "Circle of Life", "GET", "/dir/index.html",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert digest.response_digest(Algorithm.MD5, *args) == "8ca523f5e9506fed4657c9700eebdbec"
    assert digest.response_digest(Algorithm.SHA256, *args) == (
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")


def _answer(authority: DigestAuthority, challenge: str, *, username: str = "pbx", password: str = "s3cret",
            nc: str = "00000001", uri: str = URI, algorithm: Algorithm = Algorithm.MD5) -> str:
    params = digest.parse_authorization(challenge)
    assert params is not None
    nonce = params["nonce"]
    response = digest.response_digest(algorithm, username, params["realm"], password, "INVITE", uri, nonce, nc,
                                      "0a4f113b")
    return (f'Digest username="{username}", realm="{params["realm"]}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}", algorithm={algorithm.value}, qop=auth, nc={nc}, cnonce="0a4f113b"')


def test_challenge_then_answer() -> None:
    authority = DigestAuthority("callbridge", {"pbx": "s3cret"}, algorithms=(Algorithm.SHA256, Algorithm.MD5))
    assert authority.check("INVITE", [], SOURCE, 10.0).verdict is Verdict.MISSING
    challenges = authority.challenges(SOURCE, 10.0)
    assert [c.split("algorithm=")[1].split(",")[0] for c in challenges] == ["SHA-256", "MD5"]
    assert 'qop="auth"' in challenges[0] and "stale" not in challenges[0]
    # Both challenges carry the same nonce: the second answer counts on from the first.
    for nc, challenge, algorithm in zip(("00000001", "00000002"), challenges, (Algorithm.SHA256, Algorithm.MD5),
                                        strict=True):
        header = _answer(authority, challenge, algorithm=algorithm, nc=nc)
        check = authority.check("INVITE", [header], SOURCE, 11.0)
        assert check.verdict is Verdict.OK and check.username == "pbx"


def test_refusals() -> None:
    authority = DigestAuthority("callbridge", {"pbx": "s3cret"})
    challenge = authority.challenges(SOURCE, 0.0)[0]

    def verdict(header: str, *, source: str = SOURCE, now: float = 1.0) -> digest.Check:
        return authority.check("INVITE", [header], source, now)

    assert verdict(_answer(authority, challenge, password="guess")).reason == "wrong response"
    assert verdict(_answer(authority, challenge, username="other")).reason == "unknown user"
    # The response covers the digest uri: changing it afterwards breaks the response.
    tampered = _answer(authority, challenge, nc="00000009").replace(f'uri="{URI}"', 'uri="sip:other@192.0.2.10"')
    assert verdict(tampered).reason == "wrong response"
    # A nonce issued to another host, or by another process, is answered with a new challenge.
    assert verdict(_answer(authority, challenge), source="203.0.113.9").verdict is Verdict.MISSING
    other = DigestAuthority("callbridge", {"pbx": "s3cret"})
    assert other.check("INVITE", [_answer(authority, challenge)], SOURCE, 1.0).verdict is Verdict.MISSING
    # Right credentials on an old nonce: stale, so the caller retries without asking its user.
    assert verdict(_answer(authority, challenge), now=digest.NONCE_LIFETIME + 1).verdict is Verdict.STALE
    assert 'stale=true' in authority.challenges(SOURCE, 0.0, stale=True)[0]
    # A replayed request (same nonce count) is refused; a higher count is accepted.
    good = _answer(authority, challenge, nc="00000002")
    assert verdict(good).verdict is Verdict.OK
    assert verdict(good).reason == "nonce count reused"
    assert verdict(_answer(authority, challenge, nc="00000003")).verdict is Verdict.OK
    # The form without qop could be replayed: refused. SHA-256 was not offered here.
    params = digest.parse_authorization(challenge)
    assert params is not None
    no_qop = f'Digest username="pbx", realm="callbridge", nonce="{params["nonce"]}", uri="{URI}", response="00"'
    assert verdict(no_qop).reason == "qop=auth missing"
    assert verdict(_answer(authority, challenge, algorithm=Algorithm.SHA256)).reason == "algorithm not offered"
    # Other realms and schemes are not ours: challenge.
    assert verdict('Digest username="pbx", realm="elsewhere", nonce="x"').verdict is Verdict.MISSING
    assert verdict("Basic cGJ4OnMzY3JldA==").verdict is Verdict.MISSING


def test_headers_from_the_request_text() -> None:
    text = ("INVITE sip:100@example.com SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n"
            'Authorization: Digest username="pbx",\r\n realm="callbridge"\r\nContent-Length: 0\r\n\r\n'
            "Authorization: not a header, the body\r\n")
    assert digest.request_line(text) == ("INVITE", "sip:100@example.com")
    assert digest.authorization_headers(text) == ['Digest username="pbx", realm="callbridge"']
    assert digest.request_line("garbage") == ("", "")
    assert digest.parse_authorization('Digest realm="a\\"b", nc=00000001') == {"realm": 'a"b', "nc": "00000001"}
    assert digest.parse_authorization('Digest realm="unterminated') is None
    assert digest.parse_authorization("Digest " + "a=b," * 2000) is None


@given(st.text(max_size=300))
def test_any_header_gives_a_verdict(value: str) -> None:
    authority = DigestAuthority("callbridge", {"pbx": "s3cret"})
    assert authority.check("INVITE", [value], SOURCE, 1.0).verdict in (Verdict.MISSING, Verdict.FAILED)
    digest.authorization_headers(value)
    digest.request_line(value)
