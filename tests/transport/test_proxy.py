"""The proxy and server URL policy."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from secure_store.errors import ProxyConfigError
from secure_store.transport.proxy import (
    DEFAULT_PROXY_URL,
    check_server_url,
    is_onion_host,
    parse_proxy_url,
)

# Real, published v3 onion addresses (only parsed here, never contacted).
TOR_PROJECT_ONION = (
    "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
)
DUCKDUCKGO_ONION = (
    "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczad.onion"
)


# -- proxy URLs --------------------------------------------------------------


def test_default_proxy_is_tor_on_loopback_with_remote_dns() -> None:
    config = parse_proxy_url(DEFAULT_PROXY_URL)

    assert DEFAULT_PROXY_URL == "socks5h://127.0.0.1:9050"
    assert (config.host, config.port, config.remote_dns) == (
        "127.0.0.1",
        9050,
        True,
    )
    assert config.url() == "socks5h://127.0.0.1:9050"


def test_socks5_is_refused_with_the_dns_leak_explained() -> None:
    with pytest.raises(ProxyConfigError) as caught:
        parse_proxy_url("socks5://127.0.0.1:9050")

    message = str(caught.value)
    assert "resolve the server's name itself" in message
    assert "DNS query leaks" in message
    assert "socks5h://" in message


def test_socks5_is_accepted_when_allowed() -> None:
    config = parse_proxy_url("socks5://127.0.0.1:9050", allow_socks5=True)

    assert config.remote_dns is False
    assert config.url() == "socks5://127.0.0.1:9050"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://127.0.0.1:8080", "HTTP proxy"),
        ("https://127.0.0.1:8443", "HTTP proxy"),
        ("socks4a://127.0.0.1:9050", "SOCKS4"),
        ("socks4://127.0.0.1:9050", "SOCKS4"),
        ("ftp://127.0.0.1:21", "only socks5h"),
        ("127.0.0.1:9050", "no scheme"),
        ("", "never sent without a proxy"),
        ("socks5h://:9050", "names no host"),
        ("socks5h://127.0.0.1", "names no port"),
        ("socks5h://127.0.0.1:99999", "invalid port"),
        ("socks5h://127.0.0.1:9050/path", "path, query or fragment"),
        ("socks5h://127.0.0.1:9050?x=1", "path, query or fragment"),
        ("socks5h://alice@127.0.0.1:9050", "needs both"),
    ],
)
def test_proxy_urls_breaking_the_policy_are_refused(
    url: str, fragment: str
) -> None:
    with pytest.raises(ProxyConfigError, match=fragment):
        parse_proxy_url(url)


def test_overlong_socks_user_name_is_refused() -> None:
    with pytest.raises(ProxyConfigError, match="longer than SOCKS5 allows"):
        parse_proxy_url(f"socks5h://{'u' * 256}:p@127.0.0.1:1080")


def test_error_messages_never_show_the_password() -> None:
    with pytest.raises(ProxyConfigError) as caught:
        parse_proxy_url("http://alice:hunter2@127.0.0.1:8080")

    assert "hunter2" not in str(caught.value)
    assert "alice:***@127.0.0.1:8080" in str(caught.value)


def test_isolated_url_has_fresh_random_credentials_each_call() -> None:
    config = parse_proxy_url("socks5h://127.0.0.1:9050")

    urls = [urlsplit(config.isolated_url()) for _ in range(50)]

    assert len({(u.username, u.password) for u in urls}) == 50
    assert {len(u.username or "") for u in urls} == {32}
    assert {len(u.password or "") for u in urls} == {32}
    assert {u.hostname for u in urls} == {"127.0.0.1"}
    assert {u.port for u in urls} == {9050}
    assert {u.scheme for u in urls} == {"socks5h"}


def test_url_credentials_are_kept_for_an_authenticating_proxy() -> None:
    config = parse_proxy_url("socks5h://alice:s%40cret@127.0.0.1:1080")

    assert config.username == "alice"
    assert config.password == "s@cret"
    assert config.isolates_sends is False
    assert config.isolated_url() == "socks5h://alice:s%40cret@127.0.0.1:1080"


def test_isolation_can_be_turned_off() -> None:
    config = parse_proxy_url("socks5h://127.0.0.1:9050", isolate=False)

    assert config.isolated_url() == "socks5h://127.0.0.1:9050"


def test_redacted_hides_the_password() -> None:
    config = parse_proxy_url("socks5h://alice:hunter2@127.0.0.1:1080")

    assert config.redacted() == "socks5h://alice:***@127.0.0.1:1080"
    assert "hunter2" not in repr(config)


def test_ipv6_proxy_keeps_its_brackets() -> None:
    config = parse_proxy_url("socks5h://[::1]:9050")

    assert config.host == "::1"
    assert config.url() == "socks5h://[::1]:9050"


# -- server URLs -------------------------------------------------------------


def test_https_server_is_accepted() -> None:
    assert (
        check_server_url("https://gateway.example.org/report")
        == "https://gateway.example.org/report"
    )


def test_server_url_without_path_gets_root() -> None:
    assert check_server_url("HTTPS://Gateway.Example.org") == (
        "https://gateway.example.org/"
    )


def test_onion_server_over_plain_http_is_accepted() -> None:
    url = f"http://{TOR_PROJECT_ONION}/report"

    assert check_server_url(url) == url


def test_plain_http_to_a_clearnet_server_is_refused() -> None:
    with pytest.raises(ProxyConfigError, match="forge the gateway's answer"):
        check_server_url("http://gateway.example.org/report")


def test_plain_http_is_accepted_when_allowed() -> None:
    url = "http://localhost:8080/report"

    assert check_server_url(url, allow_insecure_http=True) == url


def test_onion_with_a_typo_is_refused() -> None:
    typo = "3" + TOR_PROJECT_ONION[1:]

    with pytest.raises(ProxyConfigError, match="not a valid v3 onion"):
        check_server_url(f"http://{typo}/")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://gateway.example.org/", "must start with https://"),
        ("https://", "names no host"),
        ("https://user:pw@gateway.example.org/", "user name or password"),
        ("https://gateway.example.org/#x", "fragment"),
        ("https://gateway.example.org:0x50/", "invalid port"),
        ("", "no server URL"),
    ],
)
def test_server_urls_breaking_the_policy_are_refused(
    url: str, fragment: str
) -> None:
    with pytest.raises(ProxyConfigError, match=fragment):
        check_server_url(url)


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        (TOR_PROJECT_ONION, True),
        (DUCKDUCKGO_ONION, True),
        ("www." + DUCKDUCKGO_ONION, True),
        (DUCKDUCKGO_ONION.upper(), True),
        ("expyuzz4wqqyqhjn.onion", False),  # retired v2 address
        (
            "duckduckgogg42xjoc72x3sjasowoarfbgcmvfimaftt6twagswzczaa.onion",
            False,
        ),
        ("example.org", False),
    ],
)
def test_onion_host_check(host: str, valid: bool) -> None:
    assert is_onion_host(host) is valid


def test_server_url_that_does_not_parse_is_a_proxy_config_error() -> None:
    with pytest.raises(ProxyConfigError, match="cannot be parsed"):
        check_server_url("http://[::1/")


def test_proxy_url_that_does_not_parse_is_a_proxy_config_error() -> None:
    with pytest.raises(ProxyConfigError, match="cannot be parsed"):
        parse_proxy_url("socks5h://u:p@[::1:9050")
