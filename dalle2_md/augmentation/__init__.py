"""augmentation"""
