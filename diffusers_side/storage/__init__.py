"""Where things live on disk and on the Hub: embedded models, image data sets, generation folders, cards."""
