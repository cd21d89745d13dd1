from reversib.cli import run

if __name__ == "__main__":  # guarded: the verifier's helper process re-imports __main__
    run()
