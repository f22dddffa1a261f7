"""Setup's check of the installed llama.cpp build: one short generation with the 135M test model.

Run by scripts/setup.sh in a child process; a crash in the engine kills it by a signal, which setup
answers by rebuilding with portable flags. Prints the build's feature report.
"""

from __future__ import annotations

import sys


def main() -> int:
    import llama_cpp

    from fineinstructions.backends.models import TEST_GENERATOR, resolve_gguf

    path = resolve_gguf(TEST_GENERATOR)
    info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, seed=0, verbose=False)
    out = llm.create_chat_completion(
        messages=[{"role": "user", "content": "Name one colour."}], max_tokens=8, temperature=0.0
    )
    text = out["choices"][0]["message"]["content"] or ""
    print(f"[setup] llama.cpp generates ({len(text)} chars); build: {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
