"""Label sets from published files and our runs, and how far two sets agree."""
