"""webapp.sessions: one thread per browser, owned by its user, kept across restarts."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from tests.webapp.helpers import planner, runner
from webapp.handlers import make_respond, make_restore
from webapp.sessions import app_secret, new_thread, thread_is_usable

NO_USER = SimpleNamespace(username=None)


def test_sessions_are_isolated_and_survive_a_restart(tmp_path, store):
    model = planner()
    respond = make_respond(runner(tmp_path, store, model, checkpoint="sqlite"))
    a, b = new_thread(), new_thread()
    list(respond("alpha question", [], [], a))
    list(respond("beta question", [], [], b))
    prompt_b = "\n".join(str(m.content) for m in model.seen[-1])
    assert "beta question" in prompt_b and "alpha" not in prompt_b

    restarted = runner(tmp_path, store, planner(), checkpoint="sqlite")  # a new app process
    thread, remembered, chat, trace, _, answer = make_restore(restarted)(a, b, NO_USER)
    assert thread == remembered == a  # the remembered thread wins over the session's fresh one
    assert [m["role"] for m in chat] == ["user", "assistant"]
    assert chat[0]["content"] == "alpha question" and chat[1]["content"]
    assert "**answer**" in trace and "ABSTAINED" in answer  # nothing to look at: it abstained
    current = new_thread()
    kept, _, chat, *_ = make_restore(restarted)("not-a-thread", current, NO_USER)
    assert kept == current and isinstance(chat, type(gr.skip()))  # the session's own thread
    fresh, *_ = make_restore(restarted)(None, None, NO_USER)
    assert fresh not in (a, b, current) and thread_is_usable(fresh, None)
    alice = SimpleNamespace(username="alice")
    theirs = make_restore(restarted)(a, current, alice)[0]
    assert theirs.startswith("alice~") and thread_is_usable(theirs, "alice")


def test_threads_belong_to_their_user_with_auth():
    mine = new_thread("alice")
    assert thread_is_usable(mine, "alice")
    assert not thread_is_usable(mine, "bob")
    assert not thread_is_usable(new_thread(), "alice")  # an anonymous thread
    assert not thread_is_usable(mine, None)
    assert not thread_is_usable("../../etc", None)
    odd = new_thread("a b/c")
    assert odd.startswith("a_b_c~") and thread_is_usable(odd, "a b/c")


def test_the_secret_is_made_once_and_readable_by_its_owner_only(tmp_path):
    home = tmp_path / "home"
    first = app_secret(home)
    assert len(first) == 32 and app_secret(home) == first  # kept across restarts
    assert (home / "app_secret").stat().st_mode & 0o077 == 0
