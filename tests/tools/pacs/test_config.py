"""PACS settings: URL forms, credentials kept out of URLs and reprs, TOML files, the env."""

from __future__ import annotations

import os

import pytest

from agent import AgentContext
from tools.pacs.config import PacsConfig, load_pacs_config
from tools.pacs.study import check_uid


def test_the_url_says_the_protocol_host_port_and_ae_title():
    web = PacsConfig(url="https://pacs.example.org/dicom-web/", user="u", password="p")
    assert (web.protocol, web.host, web.port, web.base_url) == \
        ("dicomweb", "pacs.example.org", 443, "https://pacs.example.org/dicom-web")
    assert web.where == "pacs.example.org:443" and web.timeout == (5.0, 30.0)
    dimse = PacsConfig(url="dicom://ORTHANC@10.0.0.5:4242")
    assert (dimse.protocol, dimse.called_aet, dimse.port, dimse.calling_aet) == \
        ("dimse", "ORTHANC", 4242, "MEDLOOP")


@pytest.mark.parametrize("kwargs,needle", [
    ({"url": "ftp://h/x"}, "must start with http://, https:// or dicom://"),
    ({"url": "https://u:pw@h/dicom-web"}, "not in the URL"),
    ({"url": "dicom://h:104"}, "AE title"),
    ({"url": "dicom://AET@h"}, "needs the port"),
    ({"url": "http://h:notaport/x"}, "bad port"),
    ({"url": "http:///x"}, "no host"),
    ({"url": "http://h", "user": "u"}, "needs a password"),
    ({"url": "http://h", "user": "u", "password": "p", "token": "t"}, "not both"),
    ({"url": "http://h", "read_timeout_s": 0}, "read_timeout_s must be a positive"),
    ({"url": "http://h", "max_study_instances": 0}, "limits must be at least 1"),
    ({"url": "http://h", "calling_aet": "X" * 17}, "calling AE title"),
    ({"url": "https://h", "ca_bundle": "/nonexistent/ca.pem"}, "'ca.pem' is not a file"),
])
def test_bad_settings_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        PacsConfig(**kwargs)


def test_secrets_never_show_in_repr():
    cfg = PacsConfig(url="http://h/dicom-web", user="alice", password="hunter2-secret")
    assert "hunter2" not in repr(cfg) and "alice" in repr(cfg)
    assert "tok-secret" not in repr(PacsConfig(url="http://h", token="tok-secret"))


def test_a_toml_file_under_the_given_values(tmp_path):
    f = tmp_path / "pacs.toml"
    f.write_text('[pacs]\nurl = "http://a/dicom-web"\nuser = "u"\npassword = "p"\n'
                 "read_timeout_s = 7\nmax_study_instances = 3\n")
    os.chmod(f, 0o600)
    cfg = load_pacs_config(f)
    assert cfg is not None and cfg.read_timeout_s == 7 and cfg.max_study_instances == 3
    over = load_pacs_config(f, url="http://b/dicom-web", user=None)
    assert over is not None and over.host == "b" and over.user == "u"  # None does not override
    assert load_pacs_config(None) is None  # no URL anywhere: no PACS


def test_a_toml_file_with_a_password_must_be_private(tmp_path):
    f = tmp_path / "pacs.toml"
    f.write_text('url = "http://a"\nuser = "u"\npassword = "p"\n')
    os.chmod(f, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        load_pacs_config(f)
    f.write_text('url = "http://a"\n')  # nothing secret in it: any mode will do
    assert load_pacs_config(f) is not None


@pytest.mark.parametrize("text,needle", [
    ("url = ", "not valid TOML"),
    ('url = "http://a"\ncolour = "red"\n', "unknown PACS setting(s): colour"),
    ('url = "http://a"\nread_timeout_s = "soon"\n', "read_timeout_s"),
])
def test_bad_toml_files_are_named(tmp_path, text, needle):
    f = tmp_path / "pacs.toml"
    f.write_text(text)
    with pytest.raises((ValueError, TypeError), match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_pacs_config(f)
    with pytest.raises(ValueError, match="not found"):
        load_pacs_config(tmp_path / "missing.toml")


def test_the_agent_context_reads_the_pacs_from_the_environment(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"MEDLOOP_PACS_URL": "https://pacs.local/dicom-web", "MEDLOOP_PACS_USER": "u",
           "MEDLOOP_PACS_PASSWORD": "pw-secret", "MEDLOOP_PACS_CA": str(ca)}
    ctx = AgentContext.from_env(env, home=tmp_path)
    assert "pw-secret" not in repr(ctx)
    cfg = ctx.pacs()
    assert cfg is not None and (cfg.host, cfg.user, cfg.password, cfg.ca_bundle) == \
        ("pacs.local", "u", "pw-secret", str(ca))
    assert ctx.pacs("dicom://PACS@127.0.0.1:104").protocol == "dimse"  # --pacs wins
    assert AgentContext.from_env({}, home=tmp_path).pacs() is None
    f = tmp_path / "p.toml"
    f.write_text('url = "http://from-file/dicom-web"\nfetch_timeout_s = 9\n')
    ctx = AgentContext.from_env({"MEDLOOP_PACS_CONFIG": str(f)}, home=tmp_path)
    assert ctx.pacs().host == "from-file" and ctx.pacs().fetch_timeout_s == 9


@pytest.mark.parametrize("uid", ["", "1.2.abc", "1.2.3/../x", "1." + "2" * 70, "1..2"])
def test_only_real_uids_reach_a_pacs(uid):
    with pytest.raises(ValueError, match="digits and dots"):
        check_uid(uid)


def test_a_uid_is_stripped():
    assert check_uid(" 1.2.840.10008 ") == "1.2.840.10008"


@pytest.mark.parametrize("key,value,needle", [
    ("max_study_bytes", "1e3x", "max_study_bytes must be a whole number"),
    ("max_study_instances", 2.5, "max_study_instances must be a whole number"),
    ("tls_verify", "no", "tls_verify must be true or false"),
    ("user", 5, "user must be text"),
    ("connect_timeout_s", True, "connect_timeout_s must be a number of seconds"),
])
def test_values_of_the_wrong_type_are_named(key, value, needle):
    with pytest.raises(ValueError, match=needle):
        load_pacs_config(None, url="http://a", **{key: value})
