"""`python -m dalle2_md.cli` = `dalle2-md`."""

from dalle2_md.cli.main import main

if __name__ == "__main__":
    main()
